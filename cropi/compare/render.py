"""The comparison's files a person reads: report.md's tables and statements, and the
validation curves in steps and in wall seconds (the mechanism plots: cropi.compare.figures)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cropi.compare import hypotheses
from cropi.compare.reading import ArmRun

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
