"""`BufferWriter`: a Ray actor that rolls out buffer shards with its own vLLM engine and writes
them (a thin shell over `shard.py`). Used for the offline buffer and the zero-gradient refresh."""

from __future__ import annotations

from pathlib import Path

import ray
from cropi.placement import placement_wait
from cropi.pool import WorkerPool
from cropi.store.files import write_table


@ray.remote
class BufferWriter:
    def __init__(self, cfg, model_path: str, worker_index: int):
        from cropi.rollout.engine import open_engine

        self.cfg = cfg
        self.enc, self.llm, self.reward_fn = open_engine(cfg, model_path, worker_index)
        self.model_path = model_path
        self.hf_model = None  # loaded on the first shard that needs it

    def build_shard(self, spec, out_path: str) -> dict:
        """Roll out one shard and write it atomically; returns its counts."""
        from cropi.model.loading import load_model
        from cropi.rollout.shard import build_shard_table

        if self.cfg.rollout.hf_recompute and self.hf_model is None:
            device = "cuda" if self.cfg.resources.device == "cuda" else "cpu"
            self.hf_model = load_model(self.model_path, self.cfg.model.dtype, device).eval()
        table = build_shard_table(self.cfg, spec, self.llm, self.enc, self.reward_fn, self.hf_model)
        write_table(table, Path(out_path))
        return {"split": spec.split, "index": spec.index, "prompts": len(spec.rows), "trajectories": table.num_rows}


def write_shards(cfg, model_path: str, jobs: list, tag: str, on_done=None) -> None:
    """Roll out every (ShardSpec, output path) of `jobs` with a pool of BufferWriters."""
    from cropi.rollout.engine import actor_options

    r = cfg.resources.rollout
    with WorkerPool(BufferWriter, lambda i: (cfg, model_path, i), count=min(r.num_workers, len(jobs)),
                    cpus=r.num_cpus, gpus=r.num_gpus, what=tag, name=f"cropi-rollout-{tag.replace(' ', '-')}",
                    options=actor_options(cfg), wait=placement_wait(cfg),
                    fields="resources.rollout.num_workers, num_cpus and num_gpus") as pool:
        pool.map(lambda w, job: w.build_shard.remote(job[0], str(job[1])), jobs,
                 on_done=on_done, describe=lambda job: job[0].relpath, timeout_s=cfg.run.hang_timeout_s)
