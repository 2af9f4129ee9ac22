"""Per-phase start-up of GRPO training: new engines and ranks every phase (trainer.keep_alive=false,
what every phase paid before) against services kept alive (a phase rebuilds the DeepSpeed engines
in place from its start checkpoint and syncs it into vLLM by broadcast). Side by side in one run.

Models: the tiny demo model, and a random-init Qwen2 of ~100M parameters at the real vocabulary
(151,936; benchmarks.weight_sync.build). Trainer world 2, ZeRO-2, one vLLM engine, as the demo.
- fresh: TrainingServices(cfg, ckpt) started and closed, `--repeats` times;
- kept:  one TrainingServices; begin_phase alternates between two checkpoint directories (the
  same weights under two paths, so every call rebuilds), `--repeats` times, first as in a run
  (the engines already hold the start checkpoint: the previous phase synced its last step and
  saved it), then with a weight sync as well (engines holding other weights).
And the same for the influence stage's gradient actors (resources.influence.keep_alive, 2 actors
as the demo): fresh = gradient_pool started, every actor's model loaded, closed; kept = one pool
whose actors free their model after a phase and load the next phase's checkpoint (alternating
between the two directories, so every call reloads).
Usage: .venv/bin/python -m benchmarks.phase_startup [--models tiny,100m] [--services training,influence]
       [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_result


def _stats(xs: list[float]) -> dict:
    return {"seconds": [round(x, 3) for x in xs], "median": round(statistics.median(xs), 3),
            "min": round(min(xs), 3), "max": round(max(xs), 3)}


@contextlib.contextmanager
def second_copy(model: str):
    """The same weights under another directory: a phase start that must reload."""
    other = Path(tempfile.mkdtemp(prefix="cropi-ckpt-", dir="/var/tmp"))
    try:
        shutil.copytree(model, other, dirs_exist_ok=True)
        yield str(other)
    finally:
        shutil.rmtree(other, ignore_errors=True)


def measure(name: str, model: str, repeats: int) -> dict:
    from cropi.config import load_config
    from cropi.trainer.services import TrainingServices

    cfg = load_config("configs/tiny-cpu.yaml", [f"model.path={model}"])
    with second_copy(model) as other:
        fresh = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            s = TrainingServices(cfg, model, tag="bench-fresh")
            fresh.append(time.perf_counter() - t0)
            s.close()
        kept, kept_synced = [], []
        with TrainingServices(cfg, model, tag="bench-kept") as s:
            s.begin_phase(model)
            for i in range(repeats):
                # as in a run: the engines hold the start checkpoint already (the previous phase synced
                # its last step and saved it; phase_saved says so), so a phase costs the rank rebuild
                target = other if i % 2 == 0 else model
                s.phase_saved(target)
                kept.append(s.begin_phase(target))
            for i in range(repeats):  # engines holding other weights (a phase after a crash): + one sync
                kept_synced.append(s.begin_phase(other if i % 2 == 0 else model))
    row = {"model": name, "fresh_per_phase": _stats(fresh), "kept_alive_per_phase": _stats(kept),
           "kept_alive_with_sync": _stats(kept_synced)}
    row["kept_over_fresh_median"] = round(row["kept_alive_per_phase"]["median"] / row["fresh_per_phase"]["median"], 4)
    print(f"{name}: fresh {row['fresh_per_phase']['median']:.2f} s, kept alive {row['kept_alive_per_phase']['median']:.2f} s "
          f"({100 * row['kept_over_fresh_median']:.1f}%), with a sync {row['kept_alive_with_sync']['median']:.2f} s", flush=True)
    return row


def measure_gradients(name: str, model: str, repeats: int) -> dict:
    from cropi.config import load_config
    from cropi.influence.actor import gradient_pool

    cfg = load_config("configs/tiny-cpu.yaml", [f"model.path={model}"])
    with second_copy(model) as other:
        fresh = []
        for i in range(repeats):
            t0 = time.perf_counter()
            with gradient_pool(cfg, model, phase=i) as pool:
                pool.each(lambda a: a.coverage.remote(model))  # as run_influence: up, model loaded
                fresh.append(time.perf_counter() - t0)
        kept = []
        with gradient_pool(cfg, model) as pool:
            pool.each(lambda a: a.coverage.remote(model))
            for i in range(repeats):
                pool.each(lambda a: a.release.remote())  # the end of a phase's influence stage
                target = other if i % 2 == 0 else model
                t0 = time.perf_counter()
                pool.each(lambda a: a.coverage.remote(target))
                kept.append(time.perf_counter() - t0)
    row = {"model": name, "service": "influence", "actors": cfg.resources.influence.num_actors,
           "fresh_per_phase": _stats(fresh), "kept_alive_per_phase": _stats(kept)}
    row["kept_over_fresh_median"] = round(row["kept_alive_per_phase"]["median"] / row["fresh_per_phase"]["median"], 4)
    print(f"{name} gradient actors: fresh {row['fresh_per_phase']['median']:.2f} s, kept alive "
          f"{row['kept_alive_per_phase']['median']:.2f} s ({100 * row['kept_over_fresh_median']:.1f}%)", flush=True)
    return row


def main() -> None:
    import ray

    from benchmarks.weight_sync import build
    from cropi.config import load_config
    from cropi.placement import local_cpus

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="tiny,100m")
    ap.add_argument("--services", default="training,influence")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    services = args.services.split(",")
    if not set(services) <= {"training", "influence"}:
        ap.error(f"--services: training and/or influence, got {args.services!r}")

    def measured(name: str, model: str) -> list[dict]:
        out = [{"service": "training", **measure(name, model, args.repeats)}] if "training" in services else []
        return out + ([measure_gradients(name, model, args.repeats)] if "influence" in services else [])

    ray.init(num_cpus=local_cpus(load_config("configs/tiny-cpu.yaml")), include_dashboard=False,
             configure_logging=False)
    rows = []
    try:
        for name in args.models.split(","):
            if name == "tiny":
                rows += measured(name, str(Path("artifacts/base-model").resolve()))
                continue
            with tempfile.TemporaryDirectory(prefix=f"cropi-{name}-", dir="/var/tmp") as d:
                params = build(name, Path(d))
                rows += [{"parameters": params, **r} for r in measured(name, d)]
    finally:
        ray.shutdown()
    write_result("phase_startup", {"world_size": 2, "zero_stage": 2, "engines": 1, "sync": "broadcast",
                                   "repeats": args.repeats, "rows": rows})


if __name__ == "__main__":
    main()
