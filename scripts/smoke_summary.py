"""One JSON line from the runs of scripts/gpu-smoke: read from what the runs wrote (run_result.json,
train_metrics.jsonl, the influence manifest), never from their stdout, which carries the step
log and the actors' forwarded prints.

    python scripts/smoke_summary.py --run NAME=RUN_DIR[:PLAN.json[:POLL.txt]] [--run ...] [--wall S] [--gpu NAME]

POLL.txt (one per run) holds lines `pid used_mib command` (nvidia-smi's compute apps joined with `ps`); each
process is named by its Ray actor class (ray::TrainerRank...) and its peak is set beside
`cropi plan`'s estimate for that actor kind.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ACTOR_KINDS = {"TrainerRank": "trainer rank", "RolloutEngine": "rollout worker", "BufferWriter": "buffer writer",
               "GradientActor": "gradient actor"}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def peak_memory(lines: list[str]) -> dict[str, float]:
    """Peak MiB per actor class (the largest process of that class) from `pid mib command` lines."""
    peaks: dict[str, float] = {}
    for line in lines:
        parts = line.split(None, 2)
        if len(parts) < 3 or not parts[1].replace(".", "", 1).isdigit():
            continue
        m = re.search(r"ray::(\w+)", parts[2])
        who = m.group(1) if m else "other"
        peaks[who] = max(peaks.get(who, 0.0), float(parts[1]))
    return peaks


def summarise_run(run: Path, plan: dict | None, peaks: dict[str, float]) -> dict:
    result = json.loads((run / "run_result.json").read_text())  # written last by run_loop: the run finished
    steps = [m for p in sorted(run.glob("phase-*/train_metrics.jsonl")) for m in read_jsonl(p) if m.get("step", 0) > 0]
    sync = [m["sync_seconds"] for m in steps if "sync_seconds" in m]
    gaps = [m["engine_logprob_gap"] for m in steps if "engine_logprob_gap" in m]
    gap_max = [m["engine_logprob_gap_max"] for m in steps if "engine_logprob_gap_max" in m]
    influence = {p.parent.parent.name: json.loads(p.read_text()).get("mode")
                 for p in sorted(run.glob("phase-*/influence/manifest.json"))}
    out = {"stage_seconds": result["stage_seconds"], "steps": len(steps),
           "sync_seconds_mean": round(sum(sync) / len(sync), 4) if sync else None,
           "sync_seconds_max": round(max(sync), 4) if sync else None,
           "engine_logprob_gap_mean": round(sum(gaps) / len(gaps), 6) if gaps else None,
           "engine_logprob_gap_max": round(max(gap_max), 6) if gap_max else None,
           "influence": influence}
    if plan is not None:
        est = {k: v["total"] for k, v in plan["stages"].items()}
        out["peak_gpu_mib_vs_plan_gib"] = {cls: {"measured_mib": peaks.get(cls), "plan_gib": est.get(kind)}
                                           for cls, kind in ACTOR_KINDS.items()}
        out["sync"] = plan.get("sync")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", action="append", default=[], metavar="NAME=RUN_DIR[:PLAN.json[:POLL.txt]]")
    ap.add_argument("--wall", type=float, default=None)
    ap.add_argument("--gpu", default="")
    args = ap.parse_args(argv)
    out = {"gpu": args.gpu or None, "wall_seconds": args.wall, "runs": {}}
    for spec in args.run:
        name, rest = spec.split("=", 1)
        run, plan, poll = (rest.split(":") + ["", ""])[:3]
        peaks = peak_memory(Path(poll).read_text().splitlines()) if poll and Path(poll).is_file() else {}
        out["runs"][name] = summarise_run(Path(run), json.loads(Path(plan).read_text()) if plan else None, peaks)
    print(json.dumps(out, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
