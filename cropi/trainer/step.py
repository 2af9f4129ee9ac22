"""One GRPO optimizer step on one rank (called inside `TrainerRank`; no Ray here)."""

from __future__ import annotations

import time

import torch

from cropi.algo.grpo import aggregate, token_loss
from cropi.config import TrainerConfig
from cropi.model.sequences import collate, token_logprobs


def grpo_step(engine, ref, shard: dict, tcfg: TrainerConfig, global_norm: float, world_size: int, device: str) -> dict:
    """shard: prompt_ids, response_ids (lists per trajectory), advantages [n]; -> metrics (sums, for the driver)."""
    t0 = time.time()
    ids, attn, target = (t.to(device) for t in collate(shard["prompt_ids"], shard["response_ids"], shard["pad_id"]))
    adv = torch.tensor(shard["advantages"], dtype=torch.float32, device=device)  # [n]
    with torch.no_grad():
        old = token_logprobs(engine.module, ids, attn)  # [n, L] the policy that sampled (weights synced)
        ref_lp = token_logprobs(ref, ids, attn)  # [n, L]
    t1 = time.time()
    engine.train()
    logp, ent = token_logprobs(engine, ids, attn, with_entropy=True)  # [n, L]
    loss_tok, clipped, k3 = token_loss(logp, old, ref_lp, adv, tcfg.eps_low, tcfg.eps_high, tcfg.kl_coef)
    loss = aggregate(loss_tok, target, tcfg.loss_agg, global_norm, world_size)
    engine.backward(loss)
    engine.step()
    m = target.float()
    loss_tok, k3, ent = loss_tok.detach(), k3.detach(), ent.detach()
    return {
        "loss_sum": loss.item() / world_size, "tokens": float(m.sum()),
        "kl_sum": float((k3 * m).sum()), "clip_sum": float((clipped.float() * m).sum()),
        "entropy_sum": float((ent * m).sum()), "grad_norm": float(engine.get_global_grad_norm() or 0.0),
        "logprob_seconds": t1 - t0, "train_seconds": time.time() - t1,
    }
