"""One PNG per run that shows what the selector did.

Top row: for each validation set, the histogram of cos(g, v_j) over eligible training prompts,
stacked: selected in colour on not-selected in grey (zero-gradient prompts have no cosine and are
left out; their count is in the title). Bottom: the family composition of the selected subset
per phase as stacked 100% bars, after a first bar for the pool itself, so a drift of the
curriculum towards some families reads at a glance. With every phase's selection given (the run
report does), a third row draws each phase's fused score over the pool, sorted, with the
selected prompts marked: how sharply the chosen few stand out, phase by phase.

Uses matplotlib's object API with the Agg canvas: no global backend switch, no display needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cropi.store.selection import read_selection

SELECTED_COLOR = "#d95f02"
OTHER_COLOR = "#9e9e9e"


def phase_label(summary: dict, index: int) -> str:
    """'phase-2' for runs/x/phase-2/influence, else the position in the list."""
    d = Path(summary.get("influence_dir", ""))
    name = d.parent.name if d.name == "influence" else d.name
    return name or f"phase {index}"


def _histograms(fig, gs, table: pa.Table, sets: list[str]) -> None:
    sel = table.column("selected").to_numpy(zero_copy_only=False)
    zero = table.column("zero_grad").to_numpy(zero_copy_only=False)
    for j, name in enumerate(sets):
        ax = fig.add_subplot(gs[0, j])
        s = table.column(f"score__{name}").to_numpy()
        elig = ~zero
        bins = np.linspace(s[elig].min(), s[elig].max(), 41)
        ax.hist([s[elig & ~sel], s[sel]], bins=bins, stacked=True, color=[OTHER_COLOR, SELECTED_COLOR],
                label=[f"not selected ({int((elig & ~sel).sum())})", f"selected ({int(sel.sum())})"])
        ax.set_title(f"{name}: cos(g, v_{name})" + (f"\n{int(zero.sum())} zero-grad left out" if zero.any() else ""),
                     fontsize=10)
        ax.set_xlabel("cosine")
        if j == 0:
            ax.set_ylabel("training prompts")
        ax.legend(fontsize=8, loc="best")


def _composition(ax, summaries: list[dict], labels: list[str]) -> None:
    fams = sorted({f for s in summaries for f in s["composition"]["family"]})
    pool = summaries[-1]["composition"]["family"]
    cols = [("pool", {f: pool.get(f, {}).get("pool_frac", 0.0) for f in fams})]
    cols += [(lab, {f: s["composition"]["family"].get(f, {}).get("selected_frac", 0.0) for f in fams})
             for lab, s in zip(labels, summaries)]
    colors = [f"C{i % 10}" for i in range(len(fams))]
    x = np.arange(len(cols))
    bottom = np.zeros(len(cols))
    for f, c in zip(fams, colors):
        h = np.array([100 * frac[f] for _, frac in cols])
        ax.bar(x, h, bottom=bottom, color=c, label=f, width=0.6, edgecolor="white")
        for xi, (b, hi) in enumerate(zip(bottom, h)):
            if hi >= 6:
                ax.text(xi, b + hi / 2, f"{hi:.0f}%", ha="center", va="center", fontsize=8, color="white")
        bottom += h
    ax.set_xticks(x, [f"pool\n{summaries[-1]['pool_size']} prompts"]
                  + [f"{lab}\n{s['selected']} selected" for lab, s in zip(labels, summaries)])
    ax.set_ylim(0, 100)
    ax.set_ylabel("% of prompts")
    ax.set_title("family composition: pool vs selected subset per phase", fontsize=10)
    handles, names = ax.get_legend_handles_labels()  # reversed: the legend reads top-down like the stack
    ax.legend(handles[::-1], names[::-1], title="family", fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")


def _fused(ax, tables: list[pa.Table], labels: list[str]) -> None:
    for i, (t, lab) in enumerate(zip(tables, labels)):
        order = np.argsort(-t.column("fused").to_numpy(), kind="stable")
        fused = t.column("fused").to_numpy()[order]
        sel = t.column("selected").to_numpy(zero_copy_only=False)[order]
        x = np.arange(1, len(fused) + 1)
        ax.plot(x, fused, color=f"C{i % 10}", lw=1.2, label=f"{lab} ({int(sel.sum())} selected)")
        ax.scatter(x[sel], fused[sel], color=f"C{i % 10}", s=6)
    ax.set_xscale("log")
    ax.set_xlabel("rank in the pool (log)")
    ax.set_ylabel("fused score")
    ax.set_title("fused score per phase, sorted (dots: selected)", fontsize=10)
    ax.legend(fontsize=8, loc="best")


def plot_selection(selection: str | Path | pa.Table, summaries: list[dict], out_png: str | Path,
                   labels: list[str] | None = None, phase_tables: list[pa.Table] | None = None) -> Path:
    """Write the PNG: histograms from one selection (a selection.parquet path, its directory, or
    the table), composition bars from the summaries of every phase so far (oldest first)."""
    if not isinstance(selection, pa.Table):
        selection = read_selection(selection)
    sets = [c.removeprefix("score__") for c in selection.column_names if c.startswith("score__")]
    labels = labels or [phase_label(s, i) for i, s in enumerate(summaries)]
    rows = 3 if phase_tables else 2
    fig = Figure(figsize=(max(8.0, 3.6 * len(sets)), 7.5 if rows == 2 else 10.5), layout="constrained")
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(rows, len(sets), height_ratios=[1, 1.1, 1][:rows])
    _histograms(fig, gs, selection, sets)
    _composition(fig.add_subplot(gs[1, :]), summaries, labels)
    if phase_tables:
        _fused(fig.add_subplot(gs[2, :]), phase_tables, labels)
    last = summaries[-1]
    fig.suptitle(f"CROPI selection, {labels[-1]}: {last['selected']} of {last['pool_size']} prompts "
                 f"(alpha={last['alpha']}, fusion={last['fusion']}, {last['mode']} scores)", fontsize=11)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out
