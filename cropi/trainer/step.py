"""One GRPO optimizer step on one rank (called inside `TrainerRank`; no Ray here).

The rank's shard arrives with its micro-batch plan (cropi.trainer.batching). For each
micro-batch: old and reference log-probs without grad, the current policy's with grad (chunked
head, cropi.model.sequences), the per-token loss aggregated with the *global* normaliser, and a
backward that accumulates into the gradients; the optimizer steps once after the last one. So
the micro-batched step equals the unbatched one (the loss is a sum over tokens), and memory is
bounded by `trainer.max_tokens_per_micro_batch` and `trainer.logits_chunk_tokens`.
An empty micro-batch (a rank with fewer sequences than another) runs its first sequence with
weight 0: it adds nothing but enters the same collectives as the other ranks.
"""

from __future__ import annotations

import time

import torch

from cropi.algo.grpo import aggregate, token_loss
from cropi.model.sequences import collate, response_logprobs


class Accumulator:
    """Backward passes that add up, then one step: a DeepSpeed engine or a plain module + optimizer."""

    def __init__(self, module, backward, step, grad_norm=lambda: 0.0):
        self.module, self.backward, self.step, self.grad_norm = module, backward, step, grad_norm

    @classmethod
    def deepspeed(cls, engine) -> "Accumulator":
        def backward(loss, last: bool):
            engine.set_gradient_accumulation_boundary(last)  # reduce and step only after the last pass
            engine.backward(loss, scale_wrt_gas=False)  # the loss already carries the global normaliser

        return cls(engine.module, backward, engine.step, lambda: engine.get_global_grad_norm() or 0.0)

    @classmethod
    def plain(cls, module, optimizer) -> "Accumulator":
        def step():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return cls(module, lambda loss, last: loss.backward(), step)


def grpo_step(acc: Accumulator, ref, shard: dict, tcfg, global_norm: float, world_size: int, device: str) -> dict:
    """shard: prompt_ids, response_ids (lists per trajectory), advantages [n], micro_batches
    (index lists; default one micro-batch) -> metrics (sums, for the driver)."""
    t_logp = t_train = 0.0
    micro = shard.get("micro_batches") or [list(range(len(shard["response_ids"])))]
    m = {"loss_sum": 0.0, "tokens": 0.0, "kl_sum": 0.0, "clip_sum": 0.0, "entropy_sum": 0.0}
    policy = acc.module
    policy.train()
    for k, idx in enumerate(micro):
        weight = 1.0 if idx else 0.0
        idx = idx or [0]
        t0 = time.time()
        ids, attn, target = (t.to(device) for t in collate([shard["prompt_ids"][i] for i in idx],
                                                           [shard["response_ids"][i] for i in idx], shard["pad_id"]))
        adv = torch.tensor([shard["advantages"][i] for i in idx], dtype=torch.float32, device=device)  # [n]
        chunk = tcfg.logits_chunk_tokens
        with torch.no_grad():
            old = response_logprobs(policy, ids, attn, target, chunk)  # [n, L] the policy that sampled (weights synced)
            ref_lp = response_logprobs(ref, ids, attn, target, chunk)  # [n, L]
        t1 = time.time()
        logp, ent = response_logprobs(policy, ids, attn, target, chunk, with_entropy=True)  # [n, L]
        loss_tok, clipped, k3 = token_loss(logp, old, ref_lp, adv, tcfg.eps_low, tcfg.eps_high, tcfg.kl_coef)
        loss = aggregate(loss_tok, target, tcfg.loss_agg, global_norm, world_size) * weight
        acc.backward(loss, k == len(micro) - 1)
        t_logp += t1 - t0
        t_train += time.time() - t1
        if weight:
            mask = target.float()
            m["loss_sum"] += loss.item() / world_size
            m["tokens"] += float(mask.sum())
            m["kl_sum"] += float((k3.detach() * mask).sum())
            m["clip_sum"] += float((clipped.float() * mask).sum())
            m["entropy_sum"] += float((ent * mask).sum())
    t0 = time.time()
    acc.step()
    return {**m, "grad_norm": float(acc.grad_norm()), "micro_batches": len(micro),
            "logprob_seconds": t_logp, "train_seconds": t_train + time.time() - t0}
