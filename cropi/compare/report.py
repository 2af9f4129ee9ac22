"""The comparison's report, from the run directories `cropi compare` wrote (cropi.compare.run).

    OUT/report.md           the tables, the speed-ups and what held and what did not
    OUT/summary.json        every figure of report.md, per arm and seed
    OUT/curves_steps.png    gain in validation pass@1 per set (and the targeted/untargeted means) vs GRPO steps
    OUT/curves_wall.png     the targeted and untargeted mean gains vs wall time (evaluation excluded)

What is measured, per arm and seed (an arm's run directory is ROOT/seed-S/ARM):
- the evaluations of phase-M/eval.jsonl, one per `eval_every` steps, at global step M*E + s
  (step 0 of a later phase repeats the previous phase's last evaluation and is skipped);
- wall time at each evaluation: the buffer (charged to every arm that reads it, at what the
  seed's builder spent), each phase's selection stages (refresh, influence, rebuffer, select)
  and the training steps, less the time spent evaluating; engine start-up is left out (the same
  for every arm);
- pass@1 of a set: the mean over its prompts of each prompt's pass rate (eval_samples samples);
  its standard error over prompts is stated per set;
- gains are paired per prompt (final pass rate less the base model's on the same prompt), and
  arm-against-arm differences paired per prompt on the same seed's sets; intervals are the
  two-level bootstrap of cropi.compare.stats (seeds, then prompts);
- the step speed-up as the paper defines it (cropi.compare.stats.speedup) against `full`, on the
  mean of the targeted sets, per seed, and the same in wall time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cropi.compare import figures, hypotheses, stats
from cropi.compare.arms import ARMS, BASELINES
from cropi.selection.baselines import NEEDS_BUFFER
from cropi.errors import CropiError
from cropi.store import influence as store_influence
from cropi.store.files import read_json, read_json_if, read_jsonl, write_json, write_text
from cropi.store.paths import RunPaths, compare_seed_dir

_OVERHEAD = ("refresh", "influence", "rebuffer", "influence_after_rebuffer", "select")


@dataclass
class ArmRun:
    """One (seed, arm) run, read back."""
    arm: str
    seed: int
    method: str
    steps_per_phase: int
    num_phases: int
    targeted: list[str]
    sets: list[str]
    evals: list[dict] = field(default_factory=list)  # {"step", "wall", "sets": {name: (ids, rates)}}
    train_wall: float = 0.0
    eval_wall: float = 0.0
    buffer_wall: float = 0.0
    selection_wall: float = 0.0
    kl_drift: list[dict] = field(default_factory=list)  # per phase {"phase", "kl", "kl_before_rebuffer"}
    rebuffers: list[dict] = field(default_factory=list)
    selections: list[list[int]] = field(default_factory=list)
    step_metrics: list[dict] = field(default_factory=list)
    prompts_per_step: int = 0

    def curve(self, names: list[str]) -> tuple[list[float], list[float], list[float]]:
        """(steps, wall seconds, mean pass@1 over `names`) at every evaluation."""
        ys = [float(np.mean([e["sets"][n][1].mean() for n in names])) for e in self.evals]
        return [e["step"] for e in self.evals], [e["wall"] for e in self.evals], ys


def _float_rates(details: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for name, d in details.items():
        ids = np.asarray(d["prompt_ids"], dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        out[name] = (ids[order], np.asarray(d["pass_rate"], dtype=np.float64)[order])
    return out


def read_arm(run_dir: Path, arm: str, seed: int, buffer_wall: float) -> ArmRun | None:
    """The arm's measurements; None when the run has not finished (no run_result.json)."""
    from cropi.config import from_dict

    result = read_json_if(run_dir / "run_result.json", "run result")
    if result is None:
        return None
    rec = read_json(run_dir / "run.json", "run record")
    cfg = from_dict(rec["config"])
    paths = RunPaths(run_dir)
    E, P = cfg.trainer.steps_per_phase, cfg.run.num_phases
    sets = list(cfg.data.families) if cfg.data.synthetic else list(cfg.data.val_paths)
    needs_buffer = result["method"] in ("cropi", *NEEDS_BUFFER)
    r = ArmRun(arm=arm, seed=seed, method=result["method"], steps_per_phase=E, num_phases=P,
               targeted=list(cfg.data.targeted) or sets, sets=sets,
               buffer_wall=buffer_wall if needs_buffer else 0.0, prompts_per_step=cfg.trainer.prompts_per_step)
    stage = result.get("stage_seconds", {})
    elapsed = r.buffer_wall
    for m in range(P):
        overhead = sum(stage.get(f"phase{m}/{s}", 0.0) for s in _OVERHEAD)
        r.selection_wall += overhead
        elapsed += overhead
        metrics = read_jsonl(paths.train_metrics(m))
        if not metrics or metrics[0]["step"] != 0:
            raise CropiError(f"{paths.train_metrics(m)}: no step-0 line; the phase did not run to the end")
        by_step = {x["step"]: x for x in metrics}
        t0, spent_eval = metrics[0]["wall_time"], 0.0
        wall_at = {0: elapsed}
        for x in metrics[1:]:
            spent_eval += x.get("eval_seconds", 0.0)
            wall_at[x["step"]] = elapsed + (x["wall_time"] - t0) - spent_eval
        r.eval_wall += spent_eval
        r.step_metrics += metrics[1:]
        for e in read_jsonl(paths.eval_details(m)):
            if "copied_from" in e or (m > 0 and e["step"] == 0):
                continue
            if e["step"] not in by_step:
                continue
            r.evals.append({"step": m * E + e["step"], "wall": wall_at[e["step"]], "sets": _float_rates(e["sets"])})
        elapsed = wall_at[max(wall_at)]
        r.selections.append(_selected(paths.selection(m)))
        imf = read_json_if(store_influence.manifest_path(paths.influence(m)), "influence manifest")
        if imf is not None:
            before = read_json_if(store_influence.manifest_path(paths.influence_before_rebuffer(m)),
                                  "influence manifest")
            r.kl_drift.append({"phase": m, "kl": imf["kl_drift"],
                               "kl_before_rebuffer": before["kl_drift"] if before else None})
        rb = read_json_if(paths.rebuffer_manifest(m), "rebuffer manifest")
        if rb is not None:
            r.rebuffers.append({"phase": m, **{k: v for k, v in rb.items() if k != "shards"}})
    r.train_wall = elapsed - r.buffer_wall - r.selection_wall
    if not r.evals:
        raise CropiError(f"{run_dir}: no evaluations in eval.jsonl (written by runs before issue 13?)")
    return r


def _selected(path: Path) -> list[int]:
    from cropi.store.selection import selected_ids

    return selected_ids(path) if path.is_file() else []


def _buffer_wall(seed_root: Path) -> float:
    """What building the seed's shared buffer cost: the largest buffer stage of its arms (the
    builder's; the others found it complete)."""
    best = 0.0
    for rr in seed_root.glob("*/run_result.json"):
        best = max(best, read_json(rr, "run result").get("stage_seconds", {}).get("buffer", 0.0))
    return best


def _pool_families(run: ArmRun, run_dir: Path) -> tuple[dict[int, str], dict[int, str], dict[int, str]]:
    """Prompt id -> data_source, -> label (clean | wrong | conflict) and -> family of the arm's pool."""
    from cropi.config import from_dict
    from cropi.data.suite import load_data

    cfg = from_dict(read_json(run_dir / "run.json", "run record")["config"])
    pool, _ = load_data(cfg)
    return ({r.prompt_id: r.data_source for r in pool},
            {r.prompt_id: str(r.extra_info.get("label", "clean")) for r in pool},
            {r.prompt_id: r.family for r in pool})


def _buffer_stats(seed_root: Path) -> dict[int, tuple[float, float]] | None:
    from cropi.store.buffer import prompt_reward_stats

    b = seed_root / "buffer"
    return prompt_reward_stats(b) if (b / "manifest.json").is_file() else None


# ---- the numbers ------------------------------------------------------------------------------


def _final(r: ArmRun, names: list[str]) -> list[np.ndarray]:
    return [r.evals[-1]["sets"][n][1] for n in names]


def _paired(a: ArmRun, b_rates: dict, names: list[str], a_eval: dict | None = None) -> list[np.ndarray]:
    """Per-prompt differences a - b on each set (prompts matched by id)."""
    a_eval = a_eval or a.evals[-1]
    out = []
    for n in names:
        ida, ra = a_eval["sets"][n]
        idb, rb = b_rates[n]
        if not np.array_equal(ida, idb):
            raise CropiError(f"seed {a.seed} set {n}: arms were evaluated on different prompts")
        out.append(ra - rb)
    return out


def _ci(x: list[list[np.ndarray]]) -> dict | None:
    if not x:
        return None
    est, lo, hi = stats.bootstrap(x)
    return {"mean": round(est, 4), "low": round(lo, 4), "high": round(hi, 4)}


def _per_seed_speedup(ref: ArmRun, r: ArmRun, names: list[str]) -> tuple:
    """(steps, wall) speed-ups; "n/a" for both when full never improved on the base model (its
    best is step 0: the ratio is undefined), None when the arm never reaches full's best."""
    rs, rw, ry = ref.curve(names)
    if stats.first_reaching(rs, ry, max(ry)) == 0:
        return "n/a", "n/a"
    s, w, y = r.curve(names)
    return stats.speedup(rs, ry, s, y), stats.speedup(rw, ry, w, y)


def load_runs(root: Path) -> tuple[dict, dict[str, dict[int, ArmRun]], dict, dict]:
    """ROOT's record and every finished (seed, arm), read once: (compare.json, arm -> seed -> run,
    (seed, arm) -> pool families, seed -> buffer statistics)."""
    root = Path(root)
    rec = read_json_if(root / "compare.json", "compare record")
    if rec is None:
        raise CropiError(f"{root} has no compare.json: not a `cropi compare` run directory")
    runs: dict[str, dict[int, ArmRun]] = {}
    families: dict[tuple[int, str], dict[int, str]] = {}
    labels: dict[tuple[int, str], dict[int, str]] = {}
    kinds: dict[tuple[int, str], dict[int, str]] = {}
    buffers: dict[int, dict | None] = {}
    for seed in rec["seeds"]:
        sroot = compare_seed_dir(root, seed)
        bw = _buffer_wall(sroot)
        buffers[seed] = _buffer_stats(sroot)
        for arm in rec["arms"]:
            d = sroot / arm
            r = read_arm(d, arm, seed, bw) if d.is_dir() else None
            if r is not None:
                runs.setdefault(arm, {})[seed] = r
                try:
                    families[(seed, arm)], labels[(seed, arm)], kinds[(seed, arm)] = _pool_families(r, d)
                except CropiError:
                    pass
    if not runs:
        raise CropiError(f"{root}: no arm has finished (no run_result.json under seed-*/ARM)")
    return rec, runs, families, buffers, {"label": labels, "family": kinds}


def summarise(root: Path, loaded: tuple | None = None) -> dict:
    """Every figure of the report, from ROOT's run directories (or what load_runs read of them)."""
    root = Path(root)
    rec, runs, families, buffers, pool_info = loaded or load_runs(root)
    any_run = next(iter(next(iter(runs.values())).values()))
    targeted = any_run.targeted
    untargeted = [s for s in any_run.sets if s not in targeted]
    groups = {"targeted": targeted, **({"untargeted": untargeted} if untargeted else {})}

    arms: dict[str, dict] = {}
    for arm, by_seed in runs.items():
        seeds_ = sorted(by_seed)
        rs = [by_seed[s] for s in seeds_]
        a = {"seeds": seeds_, "method": rs[0].method, "about": ARMS[arm].about if arm in ARMS else "",
             "per_set": {}, "groups": {}, "gain": {}}
        for name in any_run.sets:
            finals = [r.evals[-1]["sets"][name][1] for r in rs]
            a["per_set"][name] = {
                "final_mean": round(float(np.mean([f.mean() for f in finals])), 4),
                "final_per_seed": [round(float(f.mean()), 4) for f in finals],
                "standard_error": round(float(np.mean([stats.standard_error(f) for f in finals])), 4),
                "base_mean": round(float(np.mean([r.evals[0]["sets"][name][1].mean() for r in rs])), 4),
                "prompts": int(len(finals[0]))}
        for g, names in groups.items():
            a["groups"][g] = _ci([_final(r, names) for r in rs])
            a["gain"][g] = _ci([_paired(r, r.evals[0]["sets"], names) for r in rs])
            a["groups"][g]["per_seed"] = [round(stats.point([_final(r, names)]), 4) for r in rs]
            a["gain"][g]["per_seed"] = [round(stats.point([_paired(r, r.evals[0]["sets"], names)]), 4) for r in rs]
        a["wall"] = {"train_s": _mean_sd([r.train_wall for r in rs]),
                     "selection_s": _mean_sd([r.selection_wall for r in rs]),
                     "buffer_s": _mean_sd([r.buffer_wall for r in rs]),
                     "total_s": _mean_sd([r.train_wall + r.selection_wall + r.buffer_wall for r in rs]),
                     "eval_s_excluded": _mean_sd([r.eval_wall for r in rs])}
        a["training"] = _training_counts(rs)
        a["zero_variance_selected"] = _zero_share(rs, buffers)
        a["kl_drift"] = [r.kl_drift for r in rs] if any(r.kl_drift for r in rs) else None
        a["rebuffers"] = [{"seed": r.seed, **e} for r in rs for e in r.rebuffers]
        a["composition"] = _composition(rs, families, arm)
        a["label_shares"] = _label_shares(rs, pool_info["label"], arm)
        a["kind_shares"] = figures.kind_shares(rs, pool_info["label"], pool_info["family"], arm, targeted)
        arms[arm] = a

    if "full" in runs:
        for arm, by_seed in runs.items():
            sp = {}
            for g, names in groups.items():
                per = [(s, *_per_seed_speedup(runs["full"][s], by_seed[s], names)) for s in sorted(by_seed)
                       if s in runs["full"]]
                sp[g] = {"steps_per_seed": [_r(x[1]) for x in per], "wall_per_seed": [_r(x[2]) for x in per],
                         "steps_mean": _mean_or_none([x[1] for x in per]),
                         "wall_mean": _mean_or_none([x[2] for x in per])}
            arms[arm]["speedup_vs_full"] = sp

    versus = {}
    for arm in runs:
        if not arm.startswith("cropi"):
            continue
        for base in [b for b in (*BASELINES, "cropi") if b in runs and b != arm]:
            common = sorted(set(runs[arm]) & set(runs[base]))
            if not common:
                continue
            row = {"seeds": common}
            for g, names in groups.items():
                x = [_paired(runs[arm][s], runs[base][s].evals[-1]["sets"], names) for s in common]
                row[g] = _ci(x)
                row[g]["per_seed"] = [round(stats.point([v]), 4) for v in x]
            versus[f"{arm} - {base}"] = row
    out = {"root": str(root), "config": rec.get("config"), "overrides": rec.get("overrides", []),
           "seeds": rec["seeds"], "arms_asked": rec["arms"], "targeted": targeted, "untargeted": untargeted,
           "steps": any_run.steps_per_phase * any_run.num_phases, "arms": arms, "versus": versus,
           "max_standard_error": max(s["standard_error"] for a in arms.values() for s in a["per_set"].values()),
           "pool_label_shares": _pool_label_shares(pool_info["label"]),
           "pool_kind_shares": figures.pool_kind_shares(pool_info["label"], pool_info["family"], targeted)}
    out["hypotheses"] = hypotheses.judge(out, runs, pool_info["label"])
    out["break_even"] = hypotheses.break_even(out, runs)
    out["paper_selection_steps"] = hypotheses.paper_steps_per_phase_of_selection()
    out["bad_label_variance"] = _bad_label_variance(pool_info["label"], buffers)
    return out


def _label_shares(rs: list[ArmRun], labels: dict, arm: str) -> dict | None:
    """Share of each pool label (clean, wrong, conflict) in the arm's selections, seeds pooled."""
    sels = [sel for r in rs for sel in r.selections]
    lab = {}
    for r in rs:
        lab.update({(r.seed, i): v for i, v in labels.get((r.seed, arm), {}).items()})
    if not lab or len(set(lab.values())) < 2:
        return None
    ids = [(r.seed, i) for r in rs for sel in r.selections for i in sel]
    return {k: round(float(np.mean([lab.get(x) == k for x in ids])), 4) for k in sorted(set(lab.values()))} if sels else None


def _pool_label_shares(labels: dict) -> dict | None:
    vals = [v for d in labels.values() for v in d.values()]
    if len(set(vals)) < 2:
        return None
    return {k: round(vals.count(k) / len(vals), 4) for k in sorted(set(vals))}


def _bad_label_variance(labels: dict, buffers: dict) -> dict | None:
    """Per label, the share of its prompts whose K buffered rewards vary (what a zero-variance filter
    keeps): wrong labels must vary, or any filter drops them for free."""
    out: dict[str, list[float]] = {}
    for seed, st in buffers.items():
        lab = next((d for (s, _), d in labels.items() if s == seed), None)
        if st is None or not lab:
            continue
        for k in sorted(set(lab.values())):
            ids = [i for i, v in lab.items() if v == k and i in st]
            if ids:
                out.setdefault(k, []).append(float(np.mean([st[i][1] > 0 for i in ids])))
    return {k: round(float(np.mean(v)), 4) for k, v in out.items()} if len(out) > 1 else None


def _r(x):
    return x if x is None or isinstance(x, str) else round(float(x), 3)


def _mean_or_none(xs: list) -> float | None:
    """Mean of the defined speed-ups (seeds where full never improved, "n/a", are left out);
    None if any seed never reached the target (the mean of the others would flatter the arm; the
    per-seed list says which) or none is defined."""
    xs = [x for x in xs if not isinstance(x, str)]
    if not xs or any(x is None for x in xs):
        return None
    return round(float(np.mean(xs)), 3)


def _mean_sd(xs: list[float]) -> dict:
    return {"mean": round(float(np.mean(xs)), 1), "sd": round(float(np.std(xs, ddof=1)), 1) if len(xs) > 1 else 0.0,
            "per_seed": [round(x, 1) for x in xs]}


def _training_counts(rs: list[ArmRun]) -> dict:
    """What the arm trained on: rolled-out and trained groups, zero-advantage shares, skipped steps."""
    out = {"rollout_prompts": [], "trained_prompts": [], "zero_adv_share_rolled": [], "zero_adv_share_trained": [],
           "skipped_steps": [], "extra_rollout_prompts": []}
    for r in rs:
        ms = r.step_metrics
        rolled = sum(m.get("rollout_prompts", r.prompts_per_step) for m in ms)
        trained = sum(m.get("trained_prompts", r.prompts_per_step) for m in ms)
        zr = sum(m.get("rollout_zero_adv_prompts", m.get("zero_adv_prompts", 0)) for m in ms)
        zt = sum(m.get("zero_adv_prompts", 0) for m in ms)
        out["rollout_prompts"].append(rolled)
        out["trained_prompts"].append(trained)
        out["extra_rollout_prompts"].append(rolled - len(ms) * r.prompts_per_step)
        out["zero_adv_share_rolled"].append(round(zr / max(rolled, 1), 4))
        out["zero_adv_share_trained"].append(round(zt / max(trained, 1), 4))
        out["skipped_steps"].append(sum(m.get("skipped_step", 0) for m in ms))
    return out


def _zero_share(rs: list[ArmRun], buffers: dict) -> list | None:
    """Per seed and phase: the share of the arm's selection whose K buffered rewards are all equal."""
    out = []
    for r in rs:
        st = buffers.get(r.seed)
        if st is None:
            return None
        out.append([round(float(np.mean([st[i][1] == 0 for i in sel if i in st])), 4) if sel else None
                    for sel in r.selections])
    return out


def _composition(rs: list[ArmRun], families: dict, arm: str) -> dict | None:
    """Share of each family in the arm's selections (all seeds and phases together)."""
    counts: dict[str, int] = {}
    for r in rs:
        fam = families.get((r.seed, arm))
        if fam is None:
            return None
        for sel in r.selections:
            for i in sel:
                counts[fam.get(i, "?")] = counts.get(fam.get(i, "?"), 0) + 1
    total = sum(counts.values())
    return {k: round(v / total, 4) for k, v in sorted(counts.items())} if total else None


# ---- the files --------------------------------------------------------------------------------


def _fmt(ci: dict | None, sign: bool = False) -> str:
    if ci is None:
        return "-"
    f = "{:+.3f}" if sign else "{:.3f}"
    return f"{f.format(ci['mean'])} [{f.format(ci['low'])}, {f.format(ci['high'])}]"


def _sp(x) -> str:
    return "never" if x is None else x if isinstance(x, str) else f"{x:.2f}x"


def _verdicts(s: dict) -> list[str]:
    """Plain statements: for CROPI (exact) and each cropi variant against each baseline, whether
    the 95% interval of the paired difference excludes zero."""
    lines = []
    for key, row in s["versus"].items():
        for g in ("targeted", "untargeted"):
            ci = row.get(g)
            if ci is None:
                continue
            if ci["low"] > 0:
                word = "better"
            elif ci["high"] < 0:
                word = "worse"
            else:
                word = "not separated (the interval contains 0)"
            a, b = key.split(" - ")
            lines.append(f"- **{a}** vs **{b}** on the {g} sets: {word}, {_fmt(ci, True)} "
                         f"(per seed {', '.join(f'{v:+.3f}' for v in ci['per_seed'])})")
    return lines


def markdown(s: dict, command: str | None = None) -> str:
    arms, groups = s["arms"], ["targeted"] + (["untargeted"] if s["untargeted"] else [])
    L = ["# cropi compare: CROPI against the cheap selections", ""]
    if command:
        L += ["Made by:", "", "```", command, "```", ""]
    L += [f"Seeds {s['seeds']}; {s['steps']} GRPO steps per arm; targeted sets (steer the selection): "
          f"{', '.join(s['targeted'])}; untargeted (only evaluated): {', '.join(s['untargeted']) or 'none'}. "
          "Intervals: 95%, two-level bootstrap over seeds and prompts. Gains are paired per prompt "
          "against the base model; wall time excludes evaluation and engine start-up and charges the "
          "buffer to every arm that reads it.", "",
          f"Largest standard error of one set's pass@1 (over its prompts, one seed): {s['max_standard_error']:.3f}.", "",
          "## Final validation pass@1 and gain over the base model", "",
          "| arm | " + " | ".join(f"{g} final" for g in groups) + " | " + " | ".join(f"{g} gain" for g in groups)
          + " | step speed-up vs full | wall speed-up vs full | wall s (train + select + buffer) |",
          "|---" * (3 + 2 * len(groups)) + "|---|"]
    for arm, a in arms.items():
        sp = a.get("speedup_vs_full", {}).get("targeted", {})
        L.append(f"| {arm} | " + " | ".join(_fmt(a["groups"][g]) for g in groups) + " | "
                 + " | ".join(_fmt(a["gain"][g], True) for g in groups)
                 + f" | {_sp(sp.get('steps_mean'))} ({', '.join(_sp(x) for x in sp.get('steps_per_seed', []))})"
                 + f" | {_sp(sp.get('wall_mean'))} ({', '.join(_sp(x) for x in sp.get('wall_per_seed', []))})"
                 + f" | {a['wall']['total_s']['mean']:.0f} ± {a['wall']['total_s']['sd']:.0f} |")
    L += ["", "Speed-ups are on the mean of the targeted sets, per seed in brackets; 'never' when the arm "
          "does not reach full's best within the budget (then no mean is given); 'n/a' on a seed where full "
          "never improved on the base model (the ratio is undefined; the mean leaves it out).", "",
          "## Per set: final pass@1 (mean over seeds) and its standard error", "",
          "| arm | " + " | ".join(f"{n}{' (t)' if n in s['targeted'] else ''}" for n in s["targeted"] + s["untargeted"]) + " |",
          "|---" * (1 + len(s["targeted"]) + len(s["untargeted"])) + "|"]
    base_row = next(iter(arms.values()))["per_set"]
    L.append("| base model | " + " | ".join(f"{base_row[n]['base_mean']:.3f}" for n in s["targeted"] + s["untargeted"]) + " |")
    for arm, a in arms.items():
        L.append(f"| {arm} | " + " | ".join(f"{a['per_set'][n]['final_mean']:.3f} ± {a['per_set'][n]['standard_error']:.3f}"
                                            for n in s["targeted"] + s["untargeted"]) + " |")
    L += ["", *hypotheses.markdown(s)]
    L += ["", "## What held and what did not", "", *(_verdicts(s) or ["- no CROPI arm and baseline in common"]), "",
          "## What each arm trained on", "",
          "| arm | zero-variance share of the selection (per seed, per phase) | rolled-out groups with equal rewards "
          "| trained groups with equal rewards | extra rollout prompts (dynamic) | skipped steps | selection by family |",
          "|---|---|---|---|---|---|---|"]
    for arm, a in arms.items():
        t = a["training"]
        zs = "; ".join(",".join("-" if v is None else f"{v:.2f}" for v in ph) for ph in a["zero_variance_selected"]) \
            if a["zero_variance_selected"] else "-"
        comp = ", ".join(f"{k} {v:.2f}" for k, v in a["composition"].items()) if a["composition"] else "-"
        L.append(f"| {arm} | {zs} | {np.mean(t['zero_adv_share_rolled']):.2f} | {np.mean(t['zero_adv_share_trained']):.2f} "
                 f"| {int(np.mean(t['extra_rollout_prompts']))} | {sum(t['skipped_steps'])} | {comp} |")
    L += ["", "The zero-variance share is measured on the seed's original buffer: an arm that re-rolled it "
          "(cropi+drift) selects on the new rewards, so prompts that were all-equal under beta may count there."]
    drift = [(arm, a) for arm, a in arms.items() if a["kl_drift"]]
    if drift:
        L += ["", "## KL drift of the buffer, token mean of KL(pi_theta_M || beta), per phase", "",
              "| arm | seed: phase 0, 1, ... |", "|---|---|"]
        for arm, a in drift:
            L.append(f"| {arm} | " + "; ".join(
                f"{r_seed}: " + ", ".join(f"{d['kl']:.3f}" + (f" (was {d['kl_before_rebuffer']:.3f})" if d["kl_before_rebuffer"] else "")
                                          for d in per) for r_seed, per in zip(a["seeds"], a["kl_drift"])) + " |")
        rb = [e for _, a in drift for e in a["rebuffers"]]
        L += ["", f"Buffer re-rolls by the drift policy: {len(rb)}"
              + ("" if not rb else " (" + "; ".join(f"seed {e['seed']} phase {e['phase']} at KL {e.get('kl_before', float('nan')):.3f}" for e in rb) + ")")]
    L += ["", "## Figures", "", "![pass@1 vs steps](curves_steps.png)", "", "![pass@1 vs wall time](curves_wall.png)", "",
          "![cosines by kind of prompt](mechanism_cosines.png)", "", "![selection against the pool](composition.png)", ""]
    return "\n".join(L)


def plot(s: dict, runs: dict[str, dict[int, ArmRun]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = _curves(runs, s)
    panels = [*s["targeted"], *s["untargeted"], "targeted mean", *(["untargeted mean"] if s["untargeted"] else [])]
    cols = min(4, len(panels))
    files = []
    for xkey, fname, names in (("step", "curves_steps.png", panels),
                               ("wall", "curves_wall.png", panels[-(2 if s["untargeted"] else 1):])):
        c = min(cols, len(names))
        r_ = math.ceil(len(names) / c)
        fig, axes = plt.subplots(r_, c, figsize=(4.2 * c, 3.3 * r_), squeeze=False)
        for ax, panel in zip(axes.flat, names):
            for arm, per_seed in curves.items():
                xs = np.array([p[xkey] for p in per_seed])  # [seeds, evals]
                ys = np.array([p[panel] for p in per_seed])
                x = xs.mean(0)
                line, = ax.plot(x, ys.mean(0), label=arm, lw=1.6 if arm.startswith("cropi") else 1.0,
                                ls="-" if arm.startswith("cropi") else "--")
                if len(ys) > 1:
                    ax.fill_between(x, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.12)
            ax.set_title(panel + (" (targeted)" if panel in s["targeted"] else ""), fontsize=9)
            ax.set_xlabel("GRPO step" if xkey == "step" else "wall seconds (evaluation excluded)", fontsize=8)
            ax.set_ylabel("pass@1 gain over the base model", fontsize=8)
            ax.axhline(0.0, color="0.6", lw=0.6)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=6)
        fig.suptitle(f"validation pass@1 less the base model's on the same prompts (each seed has its own sets), "
                     f"mean over seeds {s['seeds']}, band: seed range", fontsize=9)
        fig.tight_layout()
        p = out / fname
        fig.savefig(p, dpi=110)
        plt.close(fig)
        files.append(p)
    return files


def _curves(runs: dict[str, dict[int, ArmRun]], s: dict) -> dict[str, list[dict]]:
    """arm -> per seed {"step": [...], "wall": [...], panel: [gain, ...]}."""
    out = {}
    for arm, a in s["arms"].items():
        per = []
        for seed in a["seeds"]:
            r = runs[arm][seed]
            st, wall, ys = r.curve(s["targeted"])
            p = {"step": st, "wall": wall, "targeted mean": ys}
            if s["untargeted"]:
                p["untargeted mean"] = r.curve(s["untargeted"])[2]
            for n in s["targeted"] + s["untargeted"]:
                p[n] = r.curve([n])[2]
            for k in p:
                if k not in ("step", "wall"):
                    p[k] = [y - p[k][0] for y in p[k]]  # gain: the seed's level (its own sets) drops out
            per.append(p)
        n = min(len(p["step"]) for p in per)
        out[arm] = [{k: v[:n] for k, v in p.items()} for p in per]
    return out


def write_compare_report(root: Path, out: Path | None = None, command: str | None = None) -> Path:
    """Write report.md, summary.json and the curves for ROOT; returns report.md's path."""
    root = Path(root)
    out = Path(out) if out else root / "report"
    loaded = load_runs(root)
    s = summarise(root, loaded)
    if command is None:
        command = (f"cropi compare {s['config']} --methods {' '.join(s['arms'])} --seeds {' '.join(map(str, s['seeds']))}"
                   + "".join(f" --set {o}" for o in s["overrides"]))
    out.mkdir(parents=True, exist_ok=True)
    plot(s, loaded[1], out)
    figures.plot_mechanism(root, s, loaded[4]["label"], loaded[4]["family"], out)
    write_json({**s, "command": command}, out / "summary.json")
    return write_text(markdown(s, command), out / "report.md")
