"""The mechanism figures of the comparison's report: what the influence signal saw and chose.

    mechanism_cosines.png  per phase, the distribution of cropi's cosine to the targeted sets
                           (mean over them) for each kind of prompt: wrong label, conflicting,
                           clean prompts of a targeted family, clean off-target prompts
    composition.png        each arm's selection by kind of prompt, against the pool's shares
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cropi.store.paths import RunPaths, compare_arm_dir
from cropi.store.selection import read_selection

KINDS = ("wrong label", "conflicting", "targeted family", "off-target")


def kind_of(label: str, family: str, targeted: list[str]) -> str:
    if label == "wrong":
        return "wrong label"
    if label == "conflict":
        return "conflicting"
    return "targeted family" if family in targeted else "off-target"


def cosines_by_kind(root: Path, s: dict, labels: dict, families: dict, arm: str = "cropi") -> dict[int, dict[str, np.ndarray]]:
    """phase -> kind -> cosines (mean over the targeted sets) of the arm's eligible prompts, seeds pooled."""

    out: dict[int, dict[str, list[float]]] = {}
    for seed in s["arms"].get(arm, {}).get("seeds", []):
        lab, fam = labels.get((seed, arm), {}), families.get((seed, arm), {})
        for m in range(s["steps"]):
            p = RunPaths(compare_arm_dir(root, seed, arm)).selection(m)
            if not p.is_file():
                break
            cols = [f"score__{n}" for n in s["targeted"]]
            t = read_selection(p).to_pydict()
            if not all(c in t for c in ["zero_grad", *cols]):  # a baseline's table: no scores
                break
            cos = np.mean([t[c] for c in cols], axis=0)
            for pid, z, c in zip(t["prompt_id"], t["zero_grad"], cos):
                if not z:
                    out.setdefault(m, {}).setdefault(kind_of(lab.get(pid, "clean"), fam.get(pid, ""), s["targeted"]),
                                                     []).append(float(c))
    return {m: {k: np.asarray(v) for k, v in d.items()} for m, d in out.items()}


def plot_mechanism(root: Path, s: dict, labels: dict, families: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    by_phase = cosines_by_kind(root, s, labels, families)
    if by_phase:
        phases = sorted(by_phase)
        fig, axes = plt.subplots(1, len(phases), figsize=(4.2 * len(phases), 3.4), squeeze=False)
        for ax, m in zip(axes.flat, phases):
            kinds = [k for k in KINDS if k in by_phase[m]]
            ax.boxplot([by_phase[m][k] for k in kinds], showfliers=False)
            ax.set_xticks(range(1, len(kinds) + 1), [f"{k}\n(n={len(by_phase[m][k])})" for k in kinds], fontsize=7)
            ax.axhline(0.0, color="0.6", lw=0.6)
            ax.set_title(f"phase {m}", fontsize=9)
            ax.set_ylabel("cosine to the targeted sets' gradient", fontsize=8)
            ax.tick_params(labelsize=7)
        fig.suptitle("cropi: cosine of each eligible prompt's off-policy gradient (mean over the targeted sets), "
                     f"seeds {s['arms']['cropi']['seeds']} pooled", fontsize=9)
        fig.tight_layout()
        files.append(out / "mechanism_cosines.png")
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    shares = _kind_shares(s, labels, families)
    if shares:
        arms = list(shares)
        fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(arms)), 3.6))
        bottom = np.zeros(len(arms))
        for k in KINDS:
            vals = np.array([shares[a].get(k, 0.0) for a in arms])
            ax.bar(arms, vals, bottom=bottom, label=k)
            bottom += vals
        ax.set_ylabel("share of the selection (seeds and phases pooled)", fontsize=8)
        ax.tick_params(axis="x", rotation=45, labelsize=7)
        ax.legend(fontsize=7, loc="upper right")
        ax.set_title("what each arm trained on, by kind of prompt ('pool': the whole pool)", fontsize=9)
        fig.tight_layout()
        files.append(out / "composition.png")
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    return files


def kind_shares(rs: list, labels: dict, families: dict, arm: str, targeted: list[str]) -> dict[str, float] | None:
    """Share of each kind of prompt in an arm's selections (seeds and phases pooled)."""
    kinds = [kind_of(labels.get((r.seed, arm), {}).get(i, "clean"), families.get((r.seed, arm), {}).get(i, ""), targeted)
             for r in rs for sel in r.selections for i in sel if (r.seed, arm) in labels]
    return {k: round(kinds.count(k) / len(kinds), 4) for k in KINDS} if kinds else None


def pool_kind_shares(labels: dict, families: dict, targeted: list[str]) -> dict[str, float] | None:
    """The same shares over the pools (one arm's view of each seed's pool)."""
    seen, kinds = set(), []
    for (seed, arm), lab in labels.items():
        if seed in seen:
            continue
        seen.add(seed)
        kinds += [kind_of(v, families.get((seed, arm), {}).get(i, ""), targeted) for i, v in lab.items()]
    return {k: round(kinds.count(k) / len(kinds), 4) for k in KINDS} if kinds else None


def _kind_shares(s: dict, labels: dict, families: dict) -> dict[str, dict[str, float]]:
    out = {}
    if s.get("pool_kind_shares"):
        out["pool"] = s["pool_kind_shares"]
    for arm, a in s["arms"].items():
        if a.get("kind_shares"):
            out[arm] = a["kind_shares"]
    return out if len(out) > 1 else {}
