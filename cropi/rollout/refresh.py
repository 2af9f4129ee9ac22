"""Refreshing zero-gradient prompts (beyond the paper; `influence.refresh_zero_grad`).

A training prompt whose K buffered rewards are all equal has advantage 0, hence gradient 0, and
can never be selected. Before phase M is scored, such prompts are re-rolled with theta_M
(K fresh samples, behavior log-probs recomputed under theta_M) into

    RUN_DIR/phase-M/refresh/shard-i.parquet     (same schema as the buffer, split "refresh/phase-M")

one file per buffer train shard i, written atomically, so a rerun skips what is done. The
gradient actors then score those prompts on the refreshed trajectories; for them rho is
pi_theta / theta_M, i.e. 1 at theta_M.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from cropi.config import Config
from cropi.data.dataset import PromptRow
from cropi.rollout.buffer import ShardSpec


def refresh_specs(cfg: Config, phase: int, pool: list[PromptRow], bdir: Path) -> list[tuple[ShardSpec, Path]]:
    """For each buffer train shard with zero-gradient prompts: (spec of those prompts, output path)."""
    from cropi.layout import phase_dir

    by_id = {r.prompt_id: r for r in pool}
    out_dir = phase_dir(cfg, phase) / "refresh"
    specs = []
    for i, shard in enumerate(sorted((bdir / "train").glob("shard-*.parquet"))):
        t = pq.read_table(shard, columns=["prompt_id", "group_std"]).to_pylist()
        zero = sorted({r["prompt_id"] for r in t if r["group_std"] == 0})
        if zero:
            specs.append((ShardSpec(f"refresh/phase-{phase}", i, [by_id[p] for p in zero], cfg.rollout.k_train),
                          out_dir / shard.name))
    return specs


def refresh_zero_grad(cfg: Config, phase: int, pool: list[PromptRow], bdir: Path, checkpoint: str) -> int:
    """Re-roll the zero-gradient prompts with `checkpoint`; returns how many prompts were re-rolled now."""
    import dataclasses

    import ray

    from cropi.placement import workers_placement
    from cropi.ray_utils import get
    from cropi.rollout.worker import start_workers

    todo = [(s, p) for s, p in refresh_specs(cfg, phase, pool, bdir) if not p.is_file()]
    if not todo:
        return 0
    ro = cfg.rollout
    rcfg = dataclasses.replace(cfg, rollout=dataclasses.replace(ro, hf_recompute=True))  # beta := theta_M, HF numerics
    place = workers_placement(ro.num_workers, ro.num_cpus_per_worker, ro.num_gpus_per_worker, f"phase {phase} refresh")
    workers = start_workers(rcfg, checkpoint, place, list(range(ro.num_workers)), tag=f"refresh{phase}")
    try:
        get([workers[i % len(workers)].build_shard.remote(spec, str(path)) for i, (spec, path) in enumerate(todo)])
    finally:
        for w in workers:
            ray.kill(w)
        place.remove()
    return sum(len(s.rows) for s, _ in todo)
