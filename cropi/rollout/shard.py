"""One buffer shard: sample K trajectories per prompt, score them, normalise, table them."""

from __future__ import annotations

import pyarrow as pa

from cropi import seeds as derived
from cropi.algo.advantages import group_advantages
from cropi.rollout.engine import sample_and_score
from cropi.rollout.logprobs import response_logprobs
from cropi.store.buffer import SCHEMA, ShardSpec


def build_shard_table(cfg, spec: ShardSpec, llm, enc, reward_fn, hf_model=None) -> pa.Table:
    seeds = [derived.buffer_sample(cfg.run.seed, spec.split, r.prompt_id) for r in spec.rows]
    ro = cfg.rollout
    prompt_ids, groups, rewards = sample_and_score(llm, enc, reward_fn, spec.rows, spec.k, ro.temperature,
                                                   ro.top_p, ro.max_new_tokens, seeds, spec.split)
    adv, mean, std = group_advantages(rewards, "group")  # [P, K], [P], [P]
    flat_prompts = [p for p, g in zip(prompt_ids, groups) for _ in g]
    flat_samples = [s for g in groups for s in g]
    if hf_model is not None:
        behavior = response_logprobs(hf_model, flat_prompts, [s.token_ids for s in flat_samples], enc.tok.pad_token_id)
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
