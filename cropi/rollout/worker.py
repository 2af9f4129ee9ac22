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
        from cropi.model.loading import load_tokenizer
        from cropi.rollout.engine import make_llm

        self.cfg = cfg
        self.tok = load_tokenizer(model_path)
        self.llm = make_llm(cfg, model_path, seed=cfg.run.seed + worker_index)
        self.reward_fn = load_reward_fn(cfg.data.reward_fn)
        self.model_path = model_path
        self.hf_model = None  # loaded on the first buffer shard that needs it (training rollouts do not)

    def build_shard(self, spec, out_path: str) -> dict:
        """Roll out one shard and write it atomically; returns its counts."""
        from cropi.data.dataset import atomic_write_table
        from cropi.model.loading import load_model
        from cropi.rollout.shard import build_shard_table

        if self.cfg.rollout.hf_recompute and self.hf_model is None:
            device = "cuda" if self.cfg.resources.device == "cuda" else "cpu"
            self.hf_model = load_model(self.model_path, self.cfg.model.dtype, device).eval()
        table = build_shard_table(self.cfg, spec, self.llm, self.tok, self.reward_fn, self.hf_model)
        atomic_write_table(table, Path(out_path))
        return {"split": spec.split, "index": spec.index, "prompts": len(spec.rows), "trajectories": table.num_rows}

    def generate(self, rows, n: int, temperature: float, seeds: list[int], where: str = "train") -> dict:
        """Fresh samples from the current weights, rewarded (GRPO rollouts and validation)."""
        from cropi.rollout.shard import sample_and_score

        ro = self.cfg.rollout
        prompt_ids, groups, rewards = sample_and_score(self.llm, self.tok, self.reward_fn, rows, n, temperature,
                                                       ro.top_p, ro.max_new_tokens, seeds, where)
        return {"prompt_ids": prompt_ids, "rewards": rewards.tolist(),
                "response_ids": [[s.token_ids for s in g] for g in groups],
                "logprobs": [[s.logprobs for s in g] for g in groups]}

    def prompt_logprobs(self, token_ids: list[list[int]]) -> list[list[float]]:
        """The engine's log-prob of every token given its prefix (the first token has none)."""
        from vllm import SamplingParams

        sp = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        outs = self.llm.generate([{"prompt_token_ids": ids} for ids in token_ids], sp, use_tqdm=False)
        return [[d[tok].logprob for tok, d in zip(ids[1:], o.prompt_logprobs[1:])] for ids, o in zip(token_ids, outs)]

    def load_weights(self, blob: bytes) -> int:
        """Weight sync: safetensors bytes from the trainer (via the object store) into the engine."""
        import os
        import tempfile

        fd, path = tempfile.mkstemp(suffix=".safetensors", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
            n = self.llm.collective_rpc("cropi_load_weights_file", args=(path,))[0]
        finally:
            os.unlink(path)
        self.llm.reset_prefix_cache()  # cached prefixes hold activations of the old weights
        return n

    def pid(self) -> int:
        import os

        return os.getpid()


def start_workers(cfg: Config, model_path: str, placement, bundles: list[int], tag: str = "buffer") -> list:
    """One RolloutWorker per bundle index, each in its bundle of `placement` (cropi.placement)."""
    ro = cfg.rollout
    return [RolloutWorker.options(
        name=f"cropi-rollout-{tag}-{i}", num_cpus=ro.num_cpus_per_worker, num_gpus=ro.num_gpus_per_worker,
        runtime_env={"env_vars": engine_env(cfg)}, max_restarts=ro.max_restarts,
        max_task_retries=ro.max_restarts, scheduling_strategy=placement.strategy(b),
    ).remote(cfg, model_path, i) for i, b in enumerate(bundles)]
