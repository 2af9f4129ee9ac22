"""`cropi status RUN_DIR`: where a run stands, read from the run directory alone."""

from __future__ import annotations

from pathlib import Path

from cropi.errors import CropiError
from cropi.store import records
from cropi.store.paths import SHARD_GLOB, RunPaths


def run_status(run_dir: str | Path) -> str:
    paths = RunPaths(run_dir)
    d = paths.root
    if not paths.run_json.is_file() and not paths.buffer.is_dir():
        raise CropiError(f"{d} is not a cropi run directory (no run.json or buffer/)")
    run = records.read_if(records.RUN_RECORD, paths.run_json) or {}
    cfg = run.get("config", {})
    phases = cfg.get("run", {}).get("num_phases")
    steps = cfg.get("trainer", {}).get("steps_per_phase")
    starts = len(run.get("history", []))
    lines = [f"run {d} ({run.get('method', '?')}, {phases} phases x {steps} steps"
             + (f", started {starts} times" if starts > 1 else "") + ")"]
    bm = records.read_if(records.BUFFER_MANIFEST, paths.buffer / "manifest.json")
    if bm is not None:
        done = len(list(paths.buffer.rglob(SHARD_GLOB)))
        total = sum(s["num_shards"] for s in bm["splits"].values())
        lines.append(f"  buffer: {'complete' if bm.get('complete') else 'building'}, {done}/{total} shards")
    else:
        lines.append("  buffer: not started" if run.get("method", "cropi") == "cropi" else "  buffer: not used")
    for m in paths.phases():
        parts = []
        idir = paths.influence(m)
        if (idir / "manifest.json").is_file():
            im = records.read(records.INFLUENCE_MANIFEST, idir / "manifest.json")
            parts.append(f"influence done (KL drift {im['kl_drift']:.4f}{', STALE' if im['buffer_stale'] else ''})")
        elif idir.is_dir():
            parts.append(f"influence {len(list((idir / 'train').glob(SHARD_GLOB)))} shards")
        if paths.selection_summary(m).is_file():
            s = records.read(records.SELECTION_SUMMARY, paths.selection_summary(m))
            parts.append(f"selected {s['selected']}/{s['pool_size']}")
        elif paths.selection(m).is_file():
            parts.append("baseline selection")
        tm = records.rows(records.TRAIN_METRICS_ROW, paths.train_metrics(m))
        if tm:
            last = tm[-1]
            val = {k.split("/", 1)[1]: v for k, v in last.items() if k.startswith("val_pass@1/")}
            parts.append(f"step {last['step']}/{steps}" + (" " + " ".join(f"{k}={v:.3f}" for k, v in val.items()) if val else ""))
        parts.append("checkpoint saved" if paths.train_summary(m).is_file() else "training not finished")
        lines.append(f"  {paths.phase(m).name}: " + "; ".join(parts))
    if paths.run_result.is_file():
        lines.append("  run finished")
    return "\n".join(lines)
