"""The comparison's numbers: per arm and seed, final pass@1 and paired gains with their
bootstrap intervals (cropi.compare.stats), speed-ups against `full`, arm-against-arm
differences, what each arm trained on, and the hypotheses (cropi.compare.hypotheses). Pure:
reads only what cropi.compare.reading returned."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cropi.compare import figures, hypotheses, stats
from cropi.compare.arms import ARMS, BASELINES
from cropi.compare.reading import ArmRun, load_runs
from cropi.errors import CropiError

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
