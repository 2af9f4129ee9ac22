"""Placement and fit of `cropi plan`: every stage's placement group, in the loop's order, packed
onto a cluster's nodes and GPUs beside what earlier stages still hold, and the memory of the
actors that then share each device. Pure: no Ray (the same requests can be made on a live Ray
cluster with `reserve_in_order`, which the tests do on a head with fake GPUs).

The stages a run asks for, in cropi.loop's order:

    buffer                       one bundle per rollout worker                  (once, if the method reads it)
    phase m: refresh             rollout workers  (influence.refresh_zero_grad)
             influence           one bundle per gradient actor                 (cropi); with
                                 resources.influence.keep_alive reserved once and held, the
                                 actors' models freed between their stages
             rebuffer            rollout workers  (influence.kl_refresh_threshold > 0; may happen)
             select              1 CPU                                          (cropi)
             train               trainer ranks and their engines (cropi.placement.training_bundles);
                                 with trainer.keep_alive reserved once, at the first phase, and held
                                 to the end: its ranks rest and (colocated) its engines sleep while
                                 the later phases' stages run beside it

Packing follows Ray's rules closely enough to answer "can it be placed": PACK (a group's bundles
go to nodes it already uses first, then in node order); a fractional GPU request takes the
fullest GPU that still holds it (best fit), a whole one takes free GPUs. Ray's own scheduler may
choose differently where several choices fit; where none fits, it cannot place the group either.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cropi.errors import CropiError
from cropi.plan.cluster import Cluster
from cropi.plan.memory import GIB
from cropi.selection.baselines import NEEDS_BUFFER
from cropi.placement import shortfall

EPS = 1e-9
KEEP_ALIVE = {"train": "trainer.keep_alive", "influence": "resources.influence.keep_alive"}  # what holds a group


@dataclass
class Bundle:
    cpus: float
    gpus: float
    actors: tuple[str, ...]  # actor kinds (cropi.plan.memory.actor_parts keys) living in it


@dataclass
class Stage:
    name: str  # e.g. "phase 1 influence"
    bundles: list[Bundle]
    fields: str  # the config fields that size it
    kind: str  # buffer | refresh | influence | rebuffer | select | train
    holds: bool = False  # its group stays reserved after the stage (trainer / resources.influence keep_alive)
    reuses: str = ""  # the kind of a held group whose bundles it runs in (no new placement group)


@dataclass
class _Node:
    cpus: float
    gpu_free: list[float]
    memory_gib: float


@dataclass
class Placed:
    stage: Stage
    slots: list[list[tuple[int, int | None]]]  # per bundle: the (node, gpu) devices it occupies


@dataclass
class Verdict:
    stages: list[dict] = field(default_factory=list)  # per stage: placed?, devices, fit
    problem: str | None = None  # the first stage that cannot be placed, with the fields to change

    @property
    def ok(self) -> bool:
        return self.problem is None


def _b(cpus: float, gpus: float, *actors: str) -> Bundle:
    return Bundle(float(cpus), float(gpus), tuple(actors))


def stages_of(cfg, method: str = "cropi") -> list[Stage]:
    """The placement groups a run of `method` asks for, in order (cropi.loop)."""

    r = cfg.resources
    ro, inf, tr = r.rollout, r.influence, r.trainer
    writers = [_b(ro.num_cpus, ro.num_gpus, "buffer writer") for _ in range(ro.num_workers)]
    rollers = [_b(ro.num_cpus, ro.num_gpus, "rollout worker") for _ in range(ro.num_workers)]
    w, n = cfg.trainer.world_size, cfg.train_engines()
    if r.placement == "split":
        train = [_b(tr.num_cpus, tr.num_gpus, "trainer rank") for _ in range(w)] + \
                [_b(ro.num_cpus, ro.num_gpus, "rollout worker") for _ in range(n)]
    else:
        train = [_b(tr.num_cpus * (i < w) + ro.num_cpus * (i < n), tr.num_gpus * (i < w) + ro.num_gpus * (i < n),
                    *(("trainer rank",) if i < w else ()), *(("rollout worker",) if i < n else ()))
                 for i in range(max(w, n))]
    wf = "resources.rollout.num_workers, num_cpus and num_gpus"
    out = []
    if method == "cropi" or method in NEEDS_BUFFER:
        out.append(Stage("buffer", writers, wf, "buffer"))
    keep = cfg.trainer.keep_alive
    for m in range(cfg.run.num_phases):
        if method == "cropi":
            if cfg.influence.refresh_zero_grad:
                out.append(Stage(f"phase {m} refresh", list(rollers), wf, "refresh"))
            out.append(Stage(f"phase {m} influence", [_b(inf.num_cpus, inf.num_gpus, "gradient actor")
                                                       for _ in range(inf.num_actors)],
                             "resources.influence.num_actors, num_cpus and num_gpus", "influence",
                             holds=inf.keep_alive and m == 0, reuses="influence" if inf.keep_alive and m else ""))
            if cfg.influence.kl_refresh_threshold > 0:
                out.append(Stage(f"phase {m} rebuffer", list(writers), wf, "rebuffer"))
            out.append(Stage(f"phase {m} select", [_b(1, 0)], "the other stages' resources (the selector needs 1 CPU)",
                             "select"))
        if not keep or m == 0:
            out.append(Stage(f"phase {m} train", list(train),
                             "trainer.world_size, resources.trainer.*, resources.rollout.num_train_engines "
                             "(else num_workers), resources.rollout.num_cpus/num_gpus and resources.placement",
                             "train", holds=keep))
    return out


def _fit_gpus(node: _Node, gpus: float) -> list[int] | None:
    """GPU indices a bundle takes on node (Ray: whole GPUs, or the fullest GPU holding a fraction)."""
    if gpus <= EPS:
        return []
    if gpus >= 1 - EPS:
        free = [i for i, f in enumerate(node.gpu_free) if f >= 1 - EPS]
        return free[:int(round(gpus))] if len(free) >= round(gpus) else None
    fits = [(f, i) for i, f in enumerate(node.gpu_free) if f >= gpus - EPS]
    return [min(fits)[1]] if fits else None


def _place(nodes: list[_Node], stage: Stage) -> list[list[tuple[int, int | None]]] | None:
    """Reserve the stage's bundles (all or nothing); -> the devices of each bundle, or None."""
    saved = [(n.cpus, list(n.gpu_free)) for n in nodes]
    used: list[int] = []
    slots = []
    for b in stage.bundles:
        order = used + [i for i in range(len(nodes)) if i not in used]
        for i in order:
            node = nodes[i]
            if node.cpus + EPS < b.cpus:
                continue
            got = _fit_gpus(node, b.gpus)
            if got is None:
                continue
            node.cpus -= b.cpus
            for g in got:
                node.gpu_free[g] -= b.gpus if b.gpus < 1 else 1.0
            if i not in used:
                used.append(i)
            slots.append([(i, g) for g in got] or [(i, None)])
            break
        else:
            for n, (c, g) in zip(nodes, saved):
                n.cpus, n.gpu_free = c, g
            return None
    return slots


def _release(nodes: list[_Node], placed: Placed) -> None:
    for b, devs in zip(placed.stage.bundles, placed.slots):
        i = devs[0][0]
        nodes[i].cpus += b.cpus
        for _, g in devs:
            if g is not None:
                nodes[i].gpu_free[g] += b.gpus if b.gpus < 1 else 1.0


def _resting(actor: str, cfg) -> str:
    """What a held (kept-alive) training actor is while other stages run."""
    if actor == "trainer rank":
        return "trainer rank (resting)"
    if actor == "rollout worker" and cfg.colocated_gpu():
        return "rollout worker (asleep)"
    if actor == "gradient actor":
        return "gradient actor (released)"
    return actor


def _moments(placed: Placed, cfg) -> list[list[tuple[tuple[int, int | None], str]]]:
    """The sets of (device, actor state) that are resident together during the stage. A colocated
    training bundle has two moments: the rank steps while its engine sleeps, then the engine
    samples while the rank rests."""
    base = [(dev, a) for b, devs in zip(placed.stage.bundles, placed.slots) for dev in devs for a in b.actors]
    if placed.stage.kind == "train" and cfg.colocated_gpu():
        step = [(d, "rollout worker (asleep)" if a == "rollout worker" else a) for d, a in base]
        sample = [(d, "trainer rank (resting)" if a == "trainer rank" else a) for d, a in base]
        return [step, sample]
    return [base]


def simulate(cfg, cluster: Cluster, parts: dict[str, dict[str, float]] | None, method: str = "cropi") -> Verdict:
    """Place every stage in order beside what is held; with `parts` (cropi.plan.memory.actor_parts),
    also the peak memory of each device at each stage."""
    gpu = cfg.resources.device == "cuda"
    nodes = [_Node(n.cpus, [1.0] * (n.gpus if gpu else 0), n.memory_gib) for n in cluster.nodes]
    held: list[Placed] = []
    verdict = Verdict()
    for stage in stages_of(cfg, method):
        if stage.reuses:  # the held group's actors at work in their own bundles, beside the other held ones
            own = next(h for h in held if h.stage.kind == stage.reuses)
            placed = Placed(stage, own.slots)
            row = {"stage": stage.name, "placed": True, "bundles": len(stage.bundles), "held": True,
                   "nodes": sorted({d[0] for devs in own.slots for d in devs}),
                   "gpus": sum(1 for devs in own.slots for d in devs if d[1] is not None)}
            if parts is not None:
                row["fit"] = _fit(cfg, placed, [h for h in held if h is not own], nodes, parts, gpu)
            verdict.stages.append(row)
            continue
        slots = _place(nodes, stage)
        if slots is None:
            verdict.problem = _why(stage, held, cluster, cfg)
            verdict.stages.append({"stage": stage.name, "placed": False})
            return verdict
        placed = Placed(stage, slots)
        row = {"stage": stage.name, "placed": True, "bundles": len(stage.bundles),
               "nodes": sorted({d[0] for devs in slots for d in devs}),
               "gpus": sum(1 for devs in slots for d in devs if d[1] is not None)}
        if parts is not None:
            row["fit"] = _fit(cfg, placed, held, nodes, parts, gpu)
        verdict.stages.append(row)
        if stage.holds:
            held.append(placed)
        else:
            _release(nodes, placed)
    return verdict


def _fit(cfg, placed: Placed, held: list[Placed], nodes: list[_Node], parts, gpu: bool) -> dict:
    """The fullest device of the stage: its resident actors (the stage's, the held ones' resting
    states) added up, at the worst moment."""
    held_res = [(dev, _resting(a, cfg)) for h in held for b, devs in zip(h.stage.bundles, h.slots)
                for dev in devs for a in b.actors]
    worst = {"gib": 0.0}
    for moment in _moments(placed, cfg):
        by_dev: dict = {}
        for dev, actor in moment + held_res:
            if gpu and dev[1] is None:
                continue  # a CPU-only actor (the selector) on a GPU cluster
            by_dev.setdefault(dev if gpu else (dev[0], None), []).append(actor)
        for dev, actors in by_dev.items():
            gib = sum(sum(parts[a].values()) for a in actors) / GIB
            if gib > worst["gib"]:
                worst = {"gib": round(gib, 2), "device": _dev_name(dev, gpu), "actors": actors,
                         "memory_gib": nodes[dev[0]].memory_gib}
    worst["fits"] = worst["gib"] <= worst.get("memory_gib", float("inf")) or not worst.get("memory_gib")
    return worst


def _dev_name(dev, gpu: bool) -> str:
    return f"node {dev[0]} GPU {dev[1]}" if gpu else f"node {dev[0]} memory"


def _why(stage: Stage, held: list[Placed], cluster: Cluster, cfg) -> str:
    bundles = [{"CPU": b.cpus, **({"GPU": b.gpus} if b.gpus and cfg.resources.device == "cuda" else {})}
               for b in stage.bundles]
    nodes = [{"CPU": n.cpus, **({"GPU": float(n.gpus)} if cfg.resources.device == "cuda" else {})} for n in cluster.nodes]
    idle = shortfall(bundles, nodes)
    asked = f"{len(bundles)} bundle{'s' * (len(bundles) != 1)} of {bundles[0]}" + \
        (" and more" if any(b != bundles[0] for b in bundles) else "")
    if idle:
        return f"{stage.name}: {idle} ({cluster.name}); lower {stage.fields}"
    holders = ", ".join(f"{h.stage.name} ({sum(b.gpus for b in h.stage.bundles):g} GPU, "
                        f"{sum(b.cpus for b in h.stage.bundles):g} CPU)" for h in held)
    if held:
        knobs = " or ".join(dict.fromkeys(KEEP_ALIVE[h.stage.kind] for h in held)) + "=false"
        return (f"{stage.name}: {asked} cannot be placed on {cluster.name} while {holders} stays reserved "
                f"(kept alive); set {knobs}, or lower {stage.fields}")
    return f"{stage.name}: {asked} cannot be packed onto the nodes of {cluster.name}; lower {stage.fields}"


def reserve_in_order(cfg, method: str = "cropi", timeout_s: float = 10.0) -> list[dict]:
    """The same requests as `simulate`, made on the live Ray cluster (placement groups only, no
    actors): each stage's group is created and waited for, the held ones kept. -> one row per
    stage, {"stage", "placed"}, stopping at the first that is not placed within timeout_s."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    held, rows = [], []
    try:
        for stage in stages_of(cfg, method):
            if stage.reuses:  # runs in a group already held: nothing new to reserve
                rows.append({"stage": stage.name, "placed": True})
                continue
            bundles = [{"CPU": b.cpus, **({"GPU": b.gpus} if b.gpus else {})} for b in stage.bundles]
            pg = placement_group(bundles, strategy="PACK")
            ok = bool(ray.wait([pg.ready()], timeout=timeout_s)[0])
            rows.append({"stage": stage.name, "placed": ok})
            if not ok or not stage.holds:
                remove_placement_group(pg)
            else:
                held.append(pg)
            if not ok:
                break
    finally:
        for pg in held:
            remove_placement_group(pg)
    return rows


def check_placement(verdict: Verdict) -> None:
    if verdict.problem:
        raise CropiError(verdict.problem + " -- see `cropi plan CONFIG --cluster ...`")
