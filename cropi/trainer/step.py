"""One GRPO optimizer step on one rank (called inside `TrainerRank`; no Ray here).

The rank's shard arrives with its micro-batch plan (cropi.trainer.batching). For each
micro-batch: old and reference log-probs without grad, the current policy's with grad (chunked
head, cropi.model.sequences), the per-token loss aggregated with the *global* normaliser, and a
backward that accumulates into the gradients; the optimizer steps once after the last one. So
the micro-batched step equals the unbatched one (the loss is a sum over tokens), and memory is
bounded by `trainer.max_tokens_per_micro_batch` and `trainer.logits_chunk_tokens`.
An empty micro-batch (a rank with fewer sequences than another) runs its first sequence with
weight 0: it adds nothing but enters the same collectives as the other ranks.

Numerics: every micro-batch's log-probs (behavior, reference, current), advantages and per-token
loss are checked for NaN/inf (cropi.algo.numerics); the first to hold one is reported with the
trajectories' prompt ids. Any rank's finding is shared with all (one all-reduce), and then no rank
applies the step: the plain path skips the optimizer; DeepSpeed ZeRO 1-2 skips a step whose
gradient norm is not finite by itself (its overflow check, which a non-finite loss always trips),
and the step is verified skipped (`engine.skipped_steps`); ZeRO 0 and 3 have their gradients zeroed
and the optimizer is not called.
"""

from __future__ import annotations

import math
import time

import torch

from cropi.algo.grpo import aggregate, token_loss
from cropi.algo.numerics import first_nonfinite
from cropi.errors import CropiError
from cropi.model.sequences import collate, response_logprobs


class Accumulator:
    """Backward passes that add up, then one step: a DeepSpeed engine or a plain module + optimizer.
    `skip()` drops the accumulated gradients without stepping; `any_rank(flag)` is true on every
    rank when it is true on one."""

    def __init__(self, module, backward, step, grad_norm=lambda: 0.0, skip=None, any_rank=bool):
        self.module, self.backward, self.step, self.grad_norm = module, backward, step, grad_norm
        self.skip, self.any_rank = skip, any_rank

    @classmethod
    def deepspeed(cls, engine) -> "Accumulator":
        import torch.distributed as dist

        def backward(loss, last: bool):
            engine.set_gradient_accumulation_boundary(last)  # reduce and step only after the last pass
            engine.backward(loss, scale_wrt_gas=False)  # the loss already carries the global normaliser

        def any_rank(flag: bool) -> bool:
            if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
                return bool(flag)
            t = torch.tensor([1.0 if flag else 0.0], device=engine.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            return bool(t.item() > 0)

        def skip():
            if engine.zero_optimization_stage() in (1, 2):
                # ZeRO 1-2 hold the reduced gradients in their own buffers: let its overflow check
                # (a non-finite gradient norm) skip the step and clear them, then make sure it did
                before = engine.skipped_steps
                engine.step()
                if engine.skipped_steps == before:
                    raise CropiError("a step with non-finite values was applied by DeepSpeed (its overflow check "
                                     "did not trip); stopping before training on corrupted weights")
            else:
                engine.zero_grad()

        return cls(engine.module, backward, engine.step, lambda: engine.get_global_grad_norm() or 0.0, skip, any_rank)

    @classmethod
    def plain(cls, module, optimizer) -> "Accumulator":
        def step():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return cls(module, lambda loss, last: loss.backward(), step, skip=lambda: optimizer.zero_grad(set_to_none=True))


def grpo_step(acc: Accumulator, ref, shard: dict, tcfg, global_norm: float, world_size: int, device: str) -> dict:
    """shard: prompt_ids, response_ids (lists per trajectory), advantages [n], micro_batches
    (index lists; default one micro-batch) -> metrics (sums, for the driver)."""
    t_logp = t_train = 0.0
    micro = shard.get("micro_batches") or [list(range(len(shard["response_ids"])))]
    m = {"loss_sum": 0.0, "tokens": 0.0, "kl_sum": 0.0, "clip_sum": 0.0, "entropy_sum": 0.0, "engine_gap_sum": 0.0,
         "engine_gap_max": 0.0}
    engine_lp = shard.get("engine_logprobs")  # the rollout engine's log-probs of the sampled tokens
    policy = acc.module
    policy.train()
    rows = shard.get("row_ids") or list(range(len(shard["response_ids"])))
    found = None  # (what, prompt ids): the first non-finite value on this rank
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
        if found is None and weight:
            hit = first_nonfinite([("advantages", adv), ("behavior log-probs", old), ("reference log-probs", ref_lp),
                                   ("log-probs", logp), ("loss", loss_tok)], target)
            if hit is not None:
                found = (hit[0], sorted({rows[idx[i]] for i in hit[1]}))
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
            if engine_lp is not None:  # does the engine sample from the weights this rank trains? (sync check)
                eng = torch.zeros_like(old)
                eng[target] = torch.tensor([x for i in idx for x in engine_lp[i]], dtype=old.dtype, device=old.device)
                gap = (eng - old).abs() * mask
                m["engine_gap_sum"] += float(gap.sum())
                m["engine_gap_max"] = max(m["engine_gap_max"], float(gap.max()))
    t0 = time.time()
    out = {**m, "micro_batches": len(micro), "logprob_seconds": t_logp}
    if acc.any_rank(found is not None):  # every rank takes this branch together
        acc.skip()
        out.update(grad_norm=0.0, skipped_step=1, nonfinite={"what": found[0], "prompt_ids": found[1]} if found else
                   {"what": "on another rank", "prompt_ids": []})
    else:
        acc.step()
        gn = float(acc.grad_norm())
        out.update(grad_norm=gn, skipped_step=0)
        if not math.isfinite(gn):  # non-finite only in backward: ZeRO 1-2 skipped it
            out.update(skipped_step=1, nonfinite={"what": "gradient", "prompt_ids": sorted(set(rows))})
    out["train_seconds"] = t_train + time.time() - t0
    return out
