"""`cropi plan CONFIG [--cluster 1x8xH100-80GB]`: before a GPU-hour is spent, three answers per stage.

    fit        memory of every actor kind on one device (cropi.plan.memory), and of the actors
               that share each device at each stage, kept-alive services included (packing)
    placement  every stage's placement group, in the loop's order, packed onto the cluster beside
               what trainer.keep_alive and resources.influence.keep_alive hold
               (cropi.plan.packing); a config that cannot be placed
               is refused naming the stage and the fields
    cost       estimated seconds of the buffer and of each stage of a phase (cropi.plan.cost), and
               the selection / training ratio beside the paper's measured one

`cropi run`, `python -m ray_jobs.cropi_loop` and `cropi compare` refuse a config whose plan does
not fit or cannot be placed (on a cluster joined by address, placement is checked against the
live nodes once connected: cropi.plan.check_live_placement).
"""

from __future__ import annotations

from cropi.errors import CropiError
from cropi.plan.cluster import Cluster, local_cluster, parse_cluster, ray_cluster
from cropi.plan.cost import PAPER, estimate_cost, work_of
from cropi.plan.memory import (BYTES, FIXES, GIB, HEAD_COPIES, INFLUENCE_HEAD_COPIES, ModelShape, actor_parts,
                               device_memory_gib, estimate)
from cropi.plan.packing import check_placement, reserve_in_order, simulate, stages_of


def make_plan(cfg, cluster: Cluster | None = None, method: str = "cropi", pool_size: int | None = None,
              shape: ModelShape | None = None, with_cost: bool = True) -> dict:
    """Fit, placement and cost of `method` on `cluster` (default: this machine)."""
    shape = shape or ModelShape.of(cfg.model.path)
    cluster = cluster or local_cluster(cfg)
    dev_gib = cluster.device.memory_gib if cluster.device is not None else None
    plan = estimate(cfg, shape, dev_gib)
    parts = actor_parts(cfg, shape, plan["device_memory_gib"])
    verdict = simulate(cfg, cluster, parts, method)
    plan.update(cluster=cluster.name, method=method, sync=cfg.sync_mode(), placement=verdict.stages,
                placement_problem=verdict.problem)
    if with_cost:
        plan["cost"] = estimate_cost(cfg, shape, cluster, work_of(cfg, pool_size))
    return plan


def check(plan: dict) -> None:
    """Refuse a plan with an actor or a shared device over its memory, or a stage that cannot be
    placed, naming the fields to change."""
    dev = plan["device_memory_gib"]
    problems = [f"{name}: estimated peak {s['total']:.1f} GiB > {dev} GiB per device (lower {FIXES[name]})"
                for name, s in plan["stages"].items() if s["total"] > dev]
    for row in plan.get("placement") or []:
        fit = row.get("fit")
        if fit and not fit["fits"]:
            kinds = sorted(set(fit["actors"]))
            problems.append(f"{row['stage']}: {fit['device']} holds {' + '.join(fit['actors'])}: estimated "
                            f"{fit['gib']:.1f} GiB > {fit['memory_gib']} GiB (lower "
                            + "; ".join(FIXES[k] for k in kinds if k in FIXES)
                            + (", or trainer.keep_alive=false" if any("resting" in a or "asleep" in a
                                                                      for a in fit["actors"]) else "")
                            + (", or resources.influence.keep_alive=false" if "gradient actor (released)"
                               in fit["actors"] else "") + ")")
            break
    if plan.get("placement_problem"):
        problems.append(plan["placement_problem"])
    if problems:
        raise CropiError("; ".join(problems) + " -- see `cropi plan CONFIG`")


def check_live_placement(cfg, method: str) -> None:
    """On a joined Ray cluster: the stages, in order, packed onto its live nodes (no memory)."""
    check_placement(simulate(cfg, ray_cluster(cfg), None, method))


def preflight(cfg, method: str = "cropi") -> dict:
    """What the run commands check before launching: on this machine everything; with a cluster
    address, the per-actor memory (placement is checked against the live nodes after joining)."""
    import os

    if os.environ.get("RAY_ADDRESS") or cfg.resources.ray_address:
        plan = estimate(cfg)
    else:
        plan = make_plan(cfg, method=method, with_cost=False)
    check(plan)
    return plan


def render(plan: dict) -> str:
    lines = [f"{plan.get('model', 'model')}: {plan['model_parameters'] / 1e6:,.1f}M parameters; {plan['device']} device of "
             f"{plan['device_memory_gib']} GiB" + (f"; cluster: {plan['cluster']}" if plan.get("cluster") else ""), "",
             "Fit: one actor of each kind", "", "| actor | estimated peak GiB | parts (GiB) |", "| --- | --- | --- |"]
    for name, parts in plan["stages"].items():
        detail = ", ".join(f"{k} {v}" for k, v in parts.items() if k != "total")
        fits = "" if parts["total"] <= plan["device_memory_gib"] else " **does not fit**"
        lines.append(f"| {name} | {parts['total']}{fits} | {detail} |")
    if plan.get("placement") is not None:
        lines += ["", f"Placement and fit per stage ({plan['method']}, in the loop's order; the fullest device)", "",
                  "| stage | placed | bundles | nodes | GPUs | fullest device | its actors | GiB |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for row in plan["placement"]:
            fit = row.get("fit") or {}
            gib = f"{fit.get('gib', '')}" + (" **does not fit**" if fit and not fit.get("fits", True) else "")
            lines.append(f"| {row['stage']} | {'yes' if row['placed'] else '**no**'} | {row.get('bundles', '')} | "
                         f"{len(row.get('nodes', [])) or ''} | {row.get('gpus', '')} | {fit.get('device', '')} | "
                         f"{' + '.join(fit.get('actors', []))} | {gib} |")
        if plan.get("placement_problem"):
            lines += ["", "**Cannot be placed:** " + plan["placement_problem"]]
    cost = plan.get("cost")
    if cost:
        tp = cost["train_parts"]
        lines += ["", f"Cost (estimated seconds; device {cost['device']}; pool {cost['work']['pool_prompts']} prompts, "
                      f"~{cost['work']['prompt_tokens']:.0f} prompt + ~{cost['work']['response_tokens']:.0f} response tokens)",
                  "", "| stage | seconds |", "| --- | --- |",
                  f"| buffer (once) | {cost['buffer_once']:,.0f} |", f"| influence (per phase) | {cost['influence']:,.0f} |",
                  f"| select (per phase) | {cost['select']:,.1f} |",
                  f"| train (per phase) | {cost['train']:,.0f} (rollout {tp['rollout']:,.0f}, step {tp['step']:,.0f}, "
                  f"sync {tp['sync']:,.0f}, sleep/wake {tp['sleep_wake']:,.0f}, evaluation {tp['evaluation']:,.0f}) |", "",
                  f"selection / training per phase: {cost['selection_over_training']:.2f} "
                  f"(with the buffer spread over the phases: {cost['selection_with_buffer_over_training']:.2f}); "
                  f"the paper measured {PAPER['ratio']:.2f} ({PAPER['selection_s']:.0f} s / {PAPER['training_s']:.0f} s, "
                  f"{PAPER['what']})",
                  "assumptions: " + ", ".join(f"{k} {v}" for k, v in cost["assumptions"].items())]
        ip = cost["influence_parts"]
        lines.append(f"influence: gradients {ip['gradients']:,.0f} s, dense projection {ip['projection']:,.0f} s "
                     f"({ip['passes']} passes), start-up {ip['startup']:,.0f} s")
        if cost.get("implied_influence_mfu_for_paper_selection_time"):
            lines.append(f"this influence FLOP count would take the paper's {PAPER['selection_s']:.0f} s at an MFU of "
                         f"{cost['implied_influence_mfu_for_paper_selection_time']:.1%}: the authors' release runs one "
                         "backward per prompt, flattens the full fp32 gradient and projects it densely, where cropi "
                         "packs prompts to a token budget and keeps only the sampled coordinates")
    return "\n".join(lines)


__all__ = ["make_plan", "check", "check_live_placement", "preflight", "render", "estimate", "ModelShape", "GIB",
           "BYTES", "HEAD_COPIES", "INFLUENCE_HEAD_COPIES", "parse_cluster", "stages_of", "simulate",
           "reserve_in_order", "device_memory_gib"]
