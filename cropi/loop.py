"""The whole CROPI loop in one Ray job (single controller), and its baselines.

    buffer (once) -> for each phase m: gradient actors -> selector -> GRPO trainers for E steps
                     -> checkpoint theta_{m+1} -> next phase
Baselines for comparison, same trainer and budget: `full` trains each phase on the whole pool;
`random` on a seeded random alpha-fraction of it.

Resume: every stage skips what is complete, at the grain it writes atomically: buffer shards,
gradient shards, the phase's selection, DeepSpeed checkpoints inside a phase, and the phase's
Hugging Face checkpoint. Rerunning the same command after the driver or any actor dies continues
from there; nothing finished is recomputed, nothing is duplicated.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pyarrow as pa

from cropi.config import Config
from cropi.data.dataset import atomic_write_table
from cropi.errors import CropiError
from cropi.layout import phase_dir, phase_start_checkpoint

METHODS = ("cropi", "full", "random")


def _phase_done(pdir: Path) -> bool:
    return (pdir / "train_summary.json").is_file() and (pdir / "checkpoint" / "config.json").is_file()


def _write_baseline_selection(cfg: Config, phase: int, pool, method: str) -> None:
    """`full`: every prompt; `random`: a seeded alpha-fraction (same size as CROPI's selection)."""
    import math

    pdir = phase_dir(cfg, phase)
    if (pdir / "selection.parquet").is_file():
        return
    ids = [r.prompt_id for r in pool]
    if method == "random":
        rng = random.Random(cfg.run.seed * 7919 + phase)
        keep = set(rng.sample(ids, math.ceil(cfg.selection.alpha * len(ids))))
    else:
        keep = set(ids)
    atomic_write_table(pa.table({"prompt_id": ids, "selected": [i in keep for i in ids]}), pdir / "selection.parquet")


def _selected_ids(pdir: Path) -> list[int]:
    import pyarrow.parquet as pq

    t = pq.read_table(pdir / "selection.parquet", columns=["prompt_id", "selected"]).to_pylist()
    return [r["prompt_id"] for r in t if r["selected"]]


def run_loop(cfg: Config, method: str = "cropi", log=print) -> dict:
    from cropi.data.suite import load_data
    from cropi.influence.actor import run_influence
    from cropi.model.loading import check_model_dir
    from cropi.monitor import RunMetrics
    from cropi.ray_utils import ray_session
    from cropi.rollout.build import build_buffer
    from cropi.selection.actor import run_selector
    from cropi.trainer.phase import run_phase

    if method not in METHODS:
        raise CropiError(f"--method must be one of {METHODS}, got {method!r}")
    check_model_dir(cfg.model.path)
    pool, val = load_data(cfg)
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp = run_dir / "run.json"
    want = {"method": method, "config": cfg.to_dict()}
    if stamp.is_file():
        old = json.loads(stamp.read_text())
        if old.get("method") != method:
            raise CropiError(f"{run_dir} holds a {old.get('method')!r} run; use another run.dir for {method!r}")
    stamp.write_text(json.dumps(want, indent=2))
    timings: dict[str, float] = {}
    with ray_session(cfg, dashboard=True):
        metrics = RunMetrics(run_dir, run_dir.name)

        def stage(name: str, fn, phase: int | None = None):
            t0 = time.time()
            out = fn()
            dt = time.time() - t0
            key = name if phase is None else f"phase{phase}/{name}"
            timings[key] = round(dt, 2)
            metrics.gauge("cropi_stage_seconds", dt, stage=name)
            metrics.event("stage", stage=name, phase=phase, seconds=round(dt, 2))
            return out

        if method == "cropi":
            stage("buffer", lambda: build_buffer(cfg))
        for m in range(cfg.run.num_phases):
            pdir = phase_dir(cfg, m)
            metrics.gauge("cropi_phase", m)
            if _phase_done(pdir):
                log(f"phase {m}: complete, skipped")
                continue
            if method == "cropi":
                t_sel = time.time()
                man = stage("influence", lambda: run_influence(cfg, m, log), m)
                metrics.gauge("cropi_kl_drift", man["kl_drift"])
                metrics.event("drift", phase=m, kl=man["kl_drift"], stale=man["buffer_stale"])
                if not (pdir / "selection_summary.json").is_file():
                    stage("select", lambda: run_selector(cfg, m, pool), m)
                metrics.gauge("cropi_selection_seconds", time.time() - t_sel)
            else:
                _write_baseline_selection(cfg, m, pool, method)
            start = phase_start_checkpoint(cfg, m)
            summary = stage("train", lambda: run_phase(cfg, m, cfg.trainer.steps_per_phase, pool,
                                                       _selected_ids(pdir), val, start, pdir, log,
                                                       on_step=metrics.on_step), m)
            metrics.event("phase_done", **{k: v for k, v in summary.items() if k != "checkpoint"})
    result = {"method": method, "run_dir": str(run_dir), "stage_seconds": timings,
              "final_checkpoint": str(phase_dir(cfg, cfg.run.num_phases - 1) / "checkpoint")}
    (run_dir / "run_result.json").write_text(json.dumps(result, indent=2))
    return result
