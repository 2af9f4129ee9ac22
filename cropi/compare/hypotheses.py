"""CROPI's claim as hypotheses stated before the runs, and their judgement from a comparison.

The hypotheses (HYPOTHESES) were written, and committed, before the runs they are judged on
(benchmarks/results/compare-small/hypotheses.md records when); the report judges each one from
its 95% interval over seeds:

    held            the interval lies on the hypothesis' side of its threshold
    not held        the interval lies on the other side
    not separated   the interval contains the threshold
    not judged      fewer than MIN_SEEDS seeds (the report still shows what they read)

Pure numpy on the report's summary and read runs (cropi.compare.summary, cropi.compare.reading): no Ray, no files.
"""

from __future__ import annotations

import math

import numpy as np
from cropi.config import load_config
from cropi.plan import ModelShape, parse_cluster
from cropi.plan.cost import PAPER, estimate_cost, work_of

BAD_LABELS = ("wrong", "conflict")
H2_BASELINES = ("filtered", "difficulty", "dynamic")
MIN_SEEDS = 5  # the rule: a hypothesis is judged over at least five seeds

HYPOTHESES = {
    "H1": "cropi reaches full's best targeted pass@1 in at most half of full's steps (step speed-up vs full >= 2)",
    "H2": "cropi beats filtered, difficulty and dynamic on the targeted sets at equal steps (final pass@1, paired "
          "per prompt)",
    "H3": "the share of wrong-label and conflicting prompts in cropi's selection is at most a quarter of their share "
          "in the pool",
    "H4": "on the untargeted sets cropi is not worse than full by more than one standard error (of full's untargeted "
          "pass@1 over prompts)",
}


def seed_bootstrap(xs: list[float], n: int = 4000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap over seeds of the mean of per-seed values."""
    x = np.asarray(xs, dtype=np.float64)
    if len(x) == 0:
        raise ValueError("no seeds")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (n, len(x)))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(x.mean()), float(lo), float(hi)


def verdict(low: float, high: float, threshold: float, above: bool) -> str:
    """Held when [low, high] lies above (above=True) or below the threshold; not held on the other side."""
    if (low >= threshold) if above else (high <= threshold):
        return "held"
    if (high < threshold) if above else (low > threshold):
        return "not held"
    return "not separated"


def _ci(mean: float, lo: float, hi: float) -> dict:
    return {"mean": round(mean, 4), "low": round(lo, 4), "high": round(hi, 4)}


def bad_share(selections: list[list[int]], labels: dict[int, str]) -> float | None:
    """Share of wrong-label and conflicting prompts over an arm's selections (its phases pooled)."""
    ids = [i for sel in selections for i in sel]
    return float(np.mean([labels.get(i) in BAD_LABELS for i in ids])) if ids else None


def label_shares(selections: list[list[int]], labels: dict[int, str]) -> dict[str, float]:
    ids = [i for sel in selections for i in sel]
    kinds = sorted(set(labels.values()))
    return {k: round(float(np.mean([labels.get(i) == k for i in ids])), 4) if ids else 0.0 for k in kinds}


def judge(s: dict, runs: dict, labels: dict) -> list[dict]:
    """Each hypothesis with its verdict and evidence. `labels`: (seed, arm) -> {prompt id: label}."""
    out = []
    arms, versus = s["arms"], s["versus"]
    # H1: the per-seed step speed-ups; a seed where cropi never reaches full's best counts 0, one
    # where full never improved is left out (the ratio is undefined there)
    sp = arms.get("cropi", {}).get("speedup_vs_full", {}).get("targeted", {}).get("steps_per_seed", [])
    xs = [0.0 if x is None else x for x in sp if not isinstance(x, str)]
    if xs:
        m, lo, hi = seed_bootstrap(xs)
        out.append({"id": "H1", "verdict": verdict(lo, hi, 2.0, above=True), "interval": _ci(m, lo, hi),
                    "evidence": f"step speed-up {m:.2f}x [{lo:.2f}, {hi:.2f}] over {len(xs)} seeds (per seed: "
                                + ", ".join("never" if x is None else "n/a" if isinstance(x, str) else f"{x:.2f}x"
                                            for x in sp) + "); threshold 2x"})
    else:
        out.append({"id": "H1", "verdict": "not judged", "evidence": "no cropi and full runs in common"})
    # H2: cropi - baseline, paired, on the targeted sets; all three must be above 0
    rows = {b: versus.get(f"cropi - {b}", {}).get("targeted") for b in H2_BASELINES}
    if all(rows.values()):
        each = {b: verdict(ci["low"], ci["high"], 0.0, above=True) for b, ci in rows.items()}
        v = "held" if all(x == "held" for x in each.values()) else \
            "not held" if any(x == "not held" for x in each.values()) else "not separated"
        out.append({"id": "H2", "verdict": v, "per_baseline": each,
                    "evidence": "; ".join(f"vs {b}: {ci['mean']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}] ({each[b]})"
                                          for b, ci in rows.items())})
    else:
        out.append({"id": "H2", "verdict": "not judged",
                    "evidence": "missing arms: " + ", ".join(b for b, ci in rows.items() if not ci)})
    # H3: per seed, (bad share in cropi's selections) / (bad share in the pool)
    ratios, shown = [], []
    for seed, r in sorted(runs.get("cropi", {}).items()):
        lab = labels.get((seed, "cropi"))
        if not lab:
            continue
        pool = float(np.mean([v in BAD_LABELS for v in lab.values()]))
        sel = bad_share(r.selections, lab)
        if pool > 0 and sel is not None:
            ratios.append(sel / pool)
            shown.append(f"seed {seed}: {sel:.3f} of {pool:.3f}")
    if ratios:
        m, lo, hi = seed_bootstrap(ratios)
        out.append({"id": "H3", "verdict": verdict(lo, hi, 0.25, above=False), "interval": _ci(m, lo, hi),
                    "evidence": f"selected / pool share of bad labels {m:.2f} [{lo:.2f}, {hi:.2f}] ({'; '.join(shown)}); "
                                "threshold 0.25"})
    else:
        out.append({"id": "H3", "verdict": "not judged", "evidence": "no labelled pool (data.wrong_label_share, "
                                                                     "data.conflict_of) or no cropi run"})
    # H4: cropi - full on the untargeted sets against minus one standard error of full's untargeted pass@1
    d = versus.get("cropi - full", {}).get("untargeted")
    if d and s["untargeted"] and "full" in arms:
        se = float(np.sqrt(np.mean([arms["full"]["per_set"][n]["standard_error"] ** 2 for n in s["untargeted"]])
                           / len(s["untargeted"])))
        out.append({"id": "H4", "verdict": verdict(d["low"], d["high"], -se, above=True), "interval": d,
                    "standard_error": round(se, 4),
                    "evidence": f"cropi - full {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] against -SE = {-se:.3f}"})
    else:
        out.append({"id": "H4", "verdict": "not judged", "evidence": "no untargeted sets, or no cropi and full runs"})
    n = len(runs.get("cropi", {}))
    for h in out:
        h["text"] = HYPOTHESES[h["id"]]
        if n < MIN_SEEDS and h["verdict"] != "not judged":  # an interval over fewer seeds is not one to judge by
            h["verdict"] = f"not judged: {n} of {MIN_SEEDS} seeds (on these it reads {h['verdict']})"
    return out


def break_even(s: dict, runs: dict) -> dict | None:
    """Where cropi's wall time would equal full's, from the measured parts (mean over seeds):

        full   S_f steps to its best, at c seconds a step
        cropi  S_c steps to reach it, plus the buffer B and O seconds of selection per phase it used
    cropi's wall time equals full's at a per-step cost c* = (B + P_c O) / (S_f - S_c), P_c the
    phases cropi needed (ceil(S_c / E)); cropi wins on wall time wherever a step costs more than c*."""
    if "cropi" not in runs or "full" not in runs:
        return None
    seeds = sorted(set(runs["cropi"]) & set(runs["full"]))
    names = s["targeted"]
    per = []
    for seed in seeds:
        f, c = runs["full"][seed], runs["cropi"][seed]
        fs, _, fy = f.curve(names)
        best = max(fy)
        s_f = next(x for x, y in zip(fs, fy) if y >= best)
        cs, _, cy = c.curve(names)
        s_c = next((x for x, y in zip(cs, cy) if x > 0 and y >= best), None)
        steps = f.steps_per_phase * f.num_phases
        per_step = f.train_wall / max(steps, 1)
        overhead = c.selection_wall / max(c.num_phases, 1)
        row = {"seed": seed, "full_steps_to_best": s_f, "cropi_steps_to_it": s_c,
               "train_s_per_step": round(per_step, 3), "selection_s_per_phase": round(overhead, 2),
               "buffer_s": round(c.buffer_wall, 1)}
        if s_c is not None and s_f > s_c:
            phases = math.ceil(s_c / c.steps_per_phase)
            row["break_even_s_per_step"] = round((c.buffer_wall + phases * overhead) / (s_f - s_c), 3)
        per.append(row)
    ok = [r for r in per if "break_even_s_per_step" in r]
    return {"per_seed": per,
            "train_s_per_step": round(float(np.mean([r["train_s_per_step"] for r in per])), 3),
            "selection_s_per_phase": round(float(np.mean([r["selection_s_per_phase"] for r in per])), 2),
            "break_even_s_per_step": round(float(np.mean([r["break_even_s_per_step"] for r in ok])), 3) if ok else None,
            "seeds_with_a_break_even": len(ok)}


def paper_steps_per_phase_of_selection() -> dict | None:
    """How many GRPO steps a phase of selection costs at the paper's configuration: measured by the
    paper (2776 s of selection, 3584 s for 200 steps), and predicted by `cropi plan`'s cost model for
    configs/qwen2.5-1.5b-8gpu.yaml on 1x8 H100 (Qwen2.5-1.5B's published shape)."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "configs" / "qwen2.5-1.5b-8gpu.yaml"
    out = {"paper_measured": round(PAPER["selection_s"] / (PAPER["training_s"] / 200), 1)}
    if not path.is_file():
        return out
    from transformers import Qwen2Config

    shape = ModelShape.from_config(Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                                               num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                                               tie_word_embeddings=True))
    cfg = load_config(path, ["model.path=Qwen/Qwen2.5-1.5B"])
    c = estimate_cost(cfg, shape, parse_cluster("1x8xH100-80GB"), work_of(cfg, pool_size=15000))
    per_step = c["train"] / cfg.trainer.steps_per_phase
    out.update(predicted=round((c["influence"] + c["select"]) / per_step, 1),
               predicted_selection_s=c["influence"] + c["select"], predicted_train_s_per_step=round(per_step, 2))
    return out


def markdown(s: dict) -> list[str]:
    """The report's sections on the hypotheses, the pool's bad data and the break-even point."""
    L = ["## Hypotheses, stated before the runs (cropi.compare.hypotheses)", "",
         "| | hypothesis | verdict | evidence (95% intervals over seeds) |", "|---|---|---|---|"]
    for h in s.get("hypotheses", []):
        L.append(f"| {h['id']} | {h['text']} | **{h['verdict']}** | {h['evidence']} |")
    pool = s.get("pool_label_shares")
    if pool:
        L += ["", "## The pool's bad data and who selected it", "",
              "Pool shares: " + ", ".join(f"{k} {v:.3f}" for k, v in pool.items())
              + (". Share of each kind whose K buffered rewards vary (what a zero-variance filter keeps): "
                 + ", ".join(f"{k} {v:.2f}" for k, v in s["bad_label_variance"].items())
                 if s.get("bad_label_variance") else "") + ".", "",
              "| arm | " + " | ".join(f"{k} share of the selection" for k in pool) + " | bad labels vs pool |",
              "|---" * (2 + len(pool)) + "|"]
        bad_pool = sum(v for k, v in pool.items() if k in BAD_LABELS)
        for arm, a in s["arms"].items():
            ls = a.get("label_shares")
            if not ls:
                continue
            bad = sum(v for k, v in ls.items() if k in BAD_LABELS)
            L.append(f"| {arm} | " + " | ".join(f"{ls.get(k, 0):.3f}" for k in pool)
                     + f" | {bad / bad_pool:.2f}x |" if bad_pool else " | - |")
    be = s.get("break_even")
    if be:
        paper = s.get("paper_selection_steps") or {}
        L += ["", "## Wall time and the break-even point", "",
              "| seed | full: steps to its best | cropi: steps to reach it | train s per step | selection s per phase "
              "| buffer s | break-even s per step |", "|---|---|---|---|---|---|---|"]
        for r in be["per_seed"]:
            L.append(f"| {r['seed']} | {r['full_steps_to_best']} | {r['cropi_steps_to_it'] if r['cropi_steps_to_it'] is not None else 'never'} "
                     f"| {r['train_s_per_step']:.3f} | {r['selection_s_per_phase']:.1f} | {r['buffer_s']:.0f} "
                     f"| {r.get('break_even_s_per_step', '-')} |")
        ratio = be["selection_s_per_phase"] / be["train_s_per_step"] if be["train_s_per_step"] else float("inf")
        L += ["", f"Here a step of training costs {be['train_s_per_step']:.3f} s and a phase of selection "
                  f"{be['selection_s_per_phase']:.1f} s: one phase of selection costs as much as {ratio:.0f} training steps. "
              + (f"cropi's wall time would equal full's at {be['break_even_s_per_step']:.3f} s a step (mean over the "
                 f"{be['seeds_with_a_break_even']} seeds where cropi reached full's best in fewer steps); it wins on wall "
                 "time wherever a step costs more than that." if be["break_even_s_per_step"] is not None else
                 "cropi never reached full's best in fewer steps, so there is no per-step cost at which it wins on wall time.")]
        if paper:
            L += ["", f"At the paper's configuration a phase of selection costs {paper['paper_measured']:.0f} training steps "
                      "as the paper measured it (2776 s against 3584 s per 200 steps on 8 GPUs)"
                  + (f", and {paper['predicted']:.0f} as `cropi plan` predicts cropi's own (selection "
                     f"{paper['predicted_selection_s']:.0f} s, {paper['predicted_train_s_per_step']:.1f} s a step on 1x8 H100; "
                     "a model, not a measurement)" if "predicted" in paper else "")
                  + f"; on this testbed it costs {ratio:.0f}. Selection pays for itself in a phase of E steps when it saves "
                    "more steps than that."]
    return L
