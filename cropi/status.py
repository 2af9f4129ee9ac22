"""`cropi status RUN_DIR`: where a run stands, read from the run directory alone."""

from __future__ import annotations

import json
from pathlib import Path


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def run_status(run_dir: str | Path) -> str:
    from cropi.errors import CropiError

    d = Path(run_dir)
    if not (d / "run.json").is_file() and not (d / "buffer").is_dir():
        raise CropiError(f"{d} is not a cropi run directory (no run.json or buffer/)")
    run = json.loads((d / "run.json").read_text()) if (d / "run.json").is_file() else {}
    cfg = run.get("config", {})
    phases = cfg.get("run", {}).get("num_phases")
    steps = cfg.get("trainer", {}).get("steps_per_phase")
    lines = [f"run {d} ({run.get('method', '?')}, {phases} phases x {steps} steps)"]
    bm = d / "buffer" / "manifest.json"
    if bm.is_file():
        m = json.loads(bm.read_text())
        done = len(list((d / "buffer").rglob("shard-*.parquet")))
        total = sum(s["num_shards"] for s in m["splits"].values())
        lines.append(f"  buffer: {'complete' if m.get('complete') else 'building'}, {done}/{total} shards")
    else:
        lines.append("  buffer: not started" if run.get("method", "cropi") == "cropi" else "  buffer: not used")
    for p in sorted(d.glob("phase-*"), key=lambda p: int(p.name.split("-")[1])):
        parts = []
        im = p / "influence" / "manifest.json"
        if im.is_file():
            m = json.loads(im.read_text())
            parts.append(f"influence done (KL drift {m['kl_drift']:.4f}{', STALE' if m['buffer_stale'] else ''})")
        elif (p / "influence").is_dir():
            parts.append(f"influence {len(list((p / 'influence' / 'train').glob('shard-*.parquet')))} shards")
        if (p / "selection_summary.json").is_file():
            s = json.loads((p / "selection_summary.json").read_text())
            parts.append(f"selected {s['selected']}/{s['pool_size']}")
        elif (p / "selection.parquet").is_file():
            parts.append("baseline selection")
        tm = _jsonl(p / "train_metrics.jsonl")
        if tm:
            last = tm[-1]
            val = {k.split("/", 1)[1]: v for k, v in last.items() if k.startswith("val_pass@1/")}
            parts.append(f"step {last['step']}/{steps}" + (" " + " ".join(f"{k}={v:.3f}" for k, v in val.items()) if val else ""))
        parts.append("checkpoint saved" if (p / "train_summary.json").is_file() else "training not finished")
        lines.append(f"  {p.name}: " + "; ".join(parts))
    if (d / "run_result.json").is_file():
        lines.append("  run finished")
    return "\n".join(lines)
