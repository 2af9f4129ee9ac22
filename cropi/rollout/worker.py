"""`RolloutWorker`: a Ray actor holding one vLLM engine (a thin shell over `shard.py`)."""

from __future__ import annotations

from pathlib import Path

import ray

from cropi.config import Config
from cropi.rollout.engine import engine_env


@ray.remote
class RolloutWorker:
    def __init__(self, cfg: Config, model_path: str, worker_index: int):
        from cropi.data.rewards import load_reward_fn
        from cropi.model.loading import load_model, load_tokenizer
        from cropi.rollout.engine import make_llm

        self.cfg = cfg
        self.tok = load_tokenizer(model_path)
        self.llm = make_llm(cfg, model_path, seed=cfg.run.seed + worker_index)
        self.reward_fn = load_reward_fn(cfg.data.reward_fn)
        self.hf_model = load_model(model_path, cfg.model.dtype).eval() if cfg.rollout.hf_recompute else None

    def build_shard(self, spec, out_path: str) -> dict:
        """Roll out one shard and write it atomically; returns its counts."""
        from cropi.data.dataset import atomic_write_table
        from cropi.rollout.shard import build_shard_table

        table = build_shard_table(self.cfg, spec, self.llm, self.tok, self.reward_fn, self.hf_model)
        atomic_write_table(table, Path(out_path))
        return {"split": spec.split, "index": spec.index, "prompts": len(spec.rows), "trajectories": table.num_rows}

    def pid(self) -> int:
        import os

        return os.getpid()


def start_workers(cfg: Config, model_path: str) -> list:
    ro = cfg.rollout
    return [RolloutWorker.options(
        name=f"cropi-rollout-{i}", num_cpus=ro.num_cpus_per_worker, num_gpus=ro.num_gpus_per_worker,
        runtime_env={"env_vars": engine_env(cfg)}, max_restarts=ro.max_restarts,
        max_task_retries=ro.max_restarts,
    ).remote(cfg, model_path, i) for i in range(ro.num_workers)]
