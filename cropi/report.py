"""`cropi report RUN_DIR`: PNG plots and a markdown summary of a run.

    RUN_DIR/report/validation.png   pass@1 per validation set over global steps, phases marked
    RUN_DIR/report/timings.png      wall time per stage and phase
    RUN_DIR/report/selection.png    score histograms and family composition per phase
    RUN_DIR/report/report.md        the numbers behind them
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cropi.status import run_status
from cropi.store import records
from cropi.store.files import write_text
from cropi.store.paths import RunPaths
from cropi.selection.plot import plot_selection


def _validation_curves(paths: RunPaths, out: Path) -> dict:
    fig = Figure(figsize=(9, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    series: dict[str, list[tuple[int, float]]] = {}
    offset = 0
    for m in paths.phases():
        tm = records.rows(records.TRAIN_METRICS_ROW, paths.train_metrics(m))
        for m in tm:
            for k, v in m.items():
                if k.startswith("val_pass@1/"):
                    series.setdefault(k.split("/", 1)[1], []).append((offset + m["step"], v))
        if tm:
            offset += tm[-1]["step"]
            ax.axvline(offset, color="#cccccc", lw=0.8)
    for name, pts in sorted(series.items()):
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", ms=3, label=name)
    ax.set_xlabel("GRPO step (all phases; grey lines end a phase)")
    ax.set_ylabel("validation pass@1")
    ax.set_title(f"{paths.root.name}: validation pass@1 per set")
    if series:
        ax.legend()
    FigureCanvasAgg(fig).print_png(str(out))
    return {k: {"first": v[0][1], "last": v[-1][1]} for k, v in series.items()}


def _timings(paths: RunPaths, out: Path) -> dict:
    stages: dict[tuple, float] = {}
    for e in records.rows(records.EVENT, paths.metrics):
        if e.get("event") == "stage":
            group = "all" if e["phase"] is None else f"phase-{e['phase']}"
            up = float(e.get("startup_seconds") or 0.0)  # actors starting, models loading: not the stage's work
            if up:
                stages[group, f"{e['stage']} start-up"] = stages.get((group, f"{e['stage']} start-up"), 0.0) + up
            stages[group, e["stage"]] = stages.get((group, e["stage"]), 0.0) + e["seconds"] - up
    groups = sorted({g for g, _ in stages}, key=lambda g: (g != "all", g))
    names = sorted({s for _, s in stages})
    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot(1, 1, 1)
    bottom = [0.0] * len(groups)
    for s in names:
        vals = [stages.get((g, s), 0.0) for g in groups]
        ax.bar(groups, vals, bottom=bottom, label=s)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("seconds")
    ax.set_title("wall time per stage")
    if names:
        ax.legend()
    FigureCanvasAgg(fig).print_png(str(out))
    return {f"{g}/{s}": round(v, 2) for (g, s), v in sorted(stages.items())}


def write_report(run_dir: str | Path) -> Path:
    paths = RunPaths(run_dir)
    d = paths.root
    status = run_status(d)
    out = paths.report
    out.mkdir(parents=True, exist_ok=True)
    val = _validation_curves(paths, out / "validation.png")
    times = _timings(paths, out / "timings.png")
    done = [m for m in paths.phases() if paths.selection_summary(m).is_file()]
    summaries = [records.read(records.SELECTION_SUMMARY, paths.selection_summary(m)) for m in done]
    sel_line = "no influence-guided selection in this run"
    if summaries:
        from cropi.store.selection import read_selection

        plot_selection(paths.selection(done[-1]), summaries, out / "selection.png",
                       phase_tables=[read_selection(paths.selection(m)) for m in done])
        sel_line = "![selection](selection.png)"
    lines = [f"# cropi report: {d.name}", "", "```", status, "```", "", "## Validation pass@1", "",
             "| set | first | last |", "| --- | --- | --- |"]
    lines += [f"| {k} | {v['first']:.3f} | {v['last']:.3f} |" for k, v in sorted(val.items())]
    lines += ["", "![validation](validation.png)", "", "## Wall time per stage (s)", "",
              "| stage | seconds |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in times.items()]
    lines += ["", "![timings](timings.png)", "", "## Selection", ""]
    for s in summaries:
        fam = ", ".join(f"{k} {v['selected_frac']:.0%}" for k, v in s["composition"]["family"].items())
        prev = s.get("previous") or {}
        lines.append(f"- {Path(s['influence_dir']).parent.name}: {s['selected']}/{s['pool_size']} selected "
                     f"({s['zero_grad']} zero-gradient); families: {fam}"
                     + (f"; Jaccard with previous phase {prev['jaccard']:.2f}" if prev else ""))
    lines += ["", sel_line, ""]
    write_text("\n".join(lines), out / "report.md")
    return out / "report.md"
