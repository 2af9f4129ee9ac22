"""One buffer shard: sample K trajectories per prompt, score them, normalise, table them."""

from __future__ import annotations

import pyarrow as pa
import torch

from cropi.algo.advantages import group_advantages
from cropi.config import Config
from cropi.data.dataset import PromptRow, render_prompt
from cropi.data.rewards import score
from cropi.rollout.buffer import SCHEMA, ShardSpec, prompt_seed
from cropi.rollout.engine import sample_groups
from cropi.rollout.logprobs import response_logprobs


def sample_and_score(llm, tok, reward_fn, rows: list[PromptRow], n: int, temperature: float, top_p: float,
                     max_new_tokens: int, seeds: list[int], where: str):
    """n samples per prompt, rewarded: (prompt token ids, groups of Samples, rewards [P, n])."""
    prompt_ids = [tok(render_prompt(r.messages, tok))["input_ids"] for r in rows]
    groups = sample_groups(llm, prompt_ids, n, temperature, top_p, max_new_tokens, seeds)
    rewards = torch.tensor([[score(reward_fn, s.text, r.ground_truth, f"{where} prompt {r.prompt_id}")
                             for s in g] for r, g in zip(rows, groups)], dtype=torch.float64)  # [P, n]
    return prompt_ids, groups, rewards


def build_shard_table(cfg: Config, spec: ShardSpec, llm, tok, reward_fn, hf_model=None) -> pa.Table:
    seeds = [prompt_seed(cfg.run.seed, spec.split, r.prompt_id) for r in spec.rows]
    ro = cfg.rollout
    prompt_ids, groups, rewards = sample_and_score(llm, tok, reward_fn, spec.rows, spec.k, ro.temperature,
                                                   ro.top_p, ro.max_new_tokens, seeds, spec.split)
    adv, mean, std = group_advantages(rewards, "group")  # [P, K], [P], [P]
    flat_prompts = [p for p, g in zip(prompt_ids, groups) for _ in g]
    flat_samples = [s for g in groups for s in g]
    if hf_model is not None:
        behavior = response_logprobs(hf_model, flat_prompts, [s.token_ids for s in flat_samples], tok.pad_token_id)
    else:
        behavior = [s.logprobs for s in flat_samples]
    cols: dict[str, list] = {name: [] for name in SCHEMA.names}
    i = 0
    for p, (row, g) in enumerate(zip(spec.rows, groups)):
        for k, s in enumerate(g):
            for name, value in (("split", spec.split), ("prompt_id", row.prompt_id), ("sample_index", k),
                                ("data_source", row.data_source), ("family", row.family),
                                ("prompt_ids", prompt_ids[p]), ("response_ids", s.token_ids),
                                ("behavior_logp", behavior[i]), ("vllm_logp", s.logprobs),
                                ("cumulative_logprob", s.cumulative_logprob),
                                ("response_text", s.text), ("finish_reason", s.finish_reason),
                                ("reward", float(rewards[p, k])), ("group_mean", float(mean[p])),
                                ("group_std", float(std[p])), ("advantage", float(adv[p, k]))):
                cols[name].append(value)
            i += 1
    return pa.table(cols, schema=SCHEMA)
