"""CROPI vs its baselines on the tiny suite: same model, trainer, steps and seed.

Runs `run_loop` for method in (cropi, random, full) with configs/tiny-cpu.yaml in fresh run
directories and reports, per method, validation pass@1 per set before and after the last
phase, and wall time by stage. One seed on a 0.4M-parameter model: a smoke-level comparison,
not a result about CROPI at scale.
Usage: .venv/bin/python -m benchmarks.baselines
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.common import write_result


def main() -> None:
    from cropi.config import load_config
    from cropi.loop import run_loop
    from cropi.store.files import read_jsonl
    from cropi.store.paths import RunPaths

    res = {}
    for method in ("cropi", "random", "full"):
        run = Path(tempfile.mkdtemp(prefix=f"cropi-{method}-"))
        cfg = load_config("configs/tiny-cpu.yaml", [f"run.dir={run}"])
        out = run_loop(cfg, method, log=lambda *_: None)
        paths = RunPaths(run)
        first = read_jsonl(paths.train_metrics(0))[0]
        last = read_jsonl(paths.train_metrics(cfg.run.num_phases - 1))[-1]
        val = {k.split("/", 1)[1]: (round(first[k], 3), round(last[k], 3)) for k in first if k.startswith("val_pass@1/")}
        res[method] = {"val_pass@1 (before, after)": val,
                       "mean_gain": round(sum(b - a for a, b in val.values()) / len(val), 4),
                       "stage_seconds": out["stage_seconds"], "total_seconds": round(sum(out["stage_seconds"].values()), 1)}
        print(method, res[method], flush=True)
    write_result("baselines", {"config": "configs/tiny-cpu.yaml", "eval": "pass@1 = mean reward of 8 samples "
                               "x 64 prompts per set at temperature 0.5", **res})


if __name__ == "__main__":
    main()
