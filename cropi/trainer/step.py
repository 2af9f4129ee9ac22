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

    def __init__(self, module, backward, step, grad_norm=lambda: 0.0, skip=None, any_rank=bool, param_groups=()):
        self.module, self.backward, self.step, self.grad_norm = module, backward, step, grad_norm
        self.skip, self.any_rank, self.param_groups = skip, any_rank, param_groups

    def set_lr(self, lr: float) -> None:
        """The learning rate of the next optimizer steps (cropi.algo.schedule)."""
        for g in self.param_groups():
            g["lr"] = lr

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

        return cls(engine.module, backward, engine.step, lambda: engine.get_global_grad_norm() or 0.0, skip, any_rank,
                   lambda: engine.optimizer.param_groups)

    @classmethod
    def plain(cls, module, optimizer) -> "Accumulator":
        def step():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return cls(module, lambda loss, last: loss.backward(), step, skip=lambda: optimizer.zero_grad(set_to_none=True),
                   param_groups=lambda: optimizer.param_groups)


def mini_batches_of(shard: dict, global_norm: float) -> list[dict]:
    """The shard's mini-batches: [{"micro": [index lists], "norm": its global normaliser}]. A shard
    planned with one mini-batch may give only its micro-batches (and the step's normaliser)."""
    if shard.get("mini_batches"):
        return shard["mini_batches"]
    return [{"micro": shard.get("micro_batches") or [list(range(len(shard["response_ids"])))], "norm": global_norm}]


def grpo_step(acc: Accumulator, ref, shard: dict, tcfg, global_norm: float, world_size: int, device: str) -> dict:
    """shard: prompt_ids, response_ids (lists per trajectory), advantages [n], mini_batches (each
    its micro-batch index lists and global normaliser; default one of everything), optionally lr
    and engine_logprobs -> metrics (sums, for the driver). trainer.ppo_epochs passes over the
    mini-batches, one optimizer step each; the behaviour and reference log-probs are computed
    once, before the first update, from the weights that sampled."""
    t_logp = t_train = 0.0
    minis = mini_batches_of(shard, global_norm)
    m = {"loss_sum": 0.0, "tokens": 0.0, "kl_sum": 0.0, "clip_sum": 0.0, "entropy_sum": 0.0, "engine_gap_sum": 0.0,
         "engine_gap_max": 0.0}
    engine_lp = shard.get("engine_logprobs")  # the rollout engine's log-probs of the sampled tokens
    policy = acc.module
    policy.train()
    if shard.get("lr") is not None:
        acc.set_lr(float(shard["lr"]))
    rows = shard.get("row_ids") or list(range(len(shard["response_ids"])))
    chunk = tcfg.logits_chunk_tokens
    kl_clamp = getattr(tcfg, "kl_clamp", 0.0)
    entropy_coef = getattr(tcfg, "entropy_coef", 0.0)
    t0 = time.time()
    fixed = []  # per mini-batch, per micro-batch: tensors and the log-probs of the weights that sampled
    for mini in minis:
        per = []
        for idx in mini["micro"]:
            weight = 1.0 if idx else 0.0
            idx = idx or [0]  # an empty micro-batch runs a sequence with weight 0: same collectives as the others
            ids, attn, target = (t.to(device) for t in collate([shard["prompt_ids"][i] for i in idx],
                                                               [shard["response_ids"][i] for i in idx], shard["pad_id"]))
            adv = torch.tensor([shard["advantages"][i] for i in idx], dtype=torch.float32, device=device)  # [n]
            with torch.no_grad():
                old = response_logprobs(policy, ids, attn, target, chunk)  # [n, L] the policy that sampled (weights synced)
                ref_lp = response_logprobs(ref, ids, attn, target, chunk)  # [n, L]
            per.append((idx, weight, ids, attn, target, adv, old, ref_lp))
        fixed.append(per)
    t_logp += time.time() - t0
    epochs, steps, skipped, found_any = max(1, getattr(tcfg, "ppo_epochs", 1)), 0, 0, None
    out = {"grad_norm": 0.0}
    for epoch in range(epochs):
        for mini, per in zip(minis, fixed):
            found = None  # (what, prompt ids): the first non-finite value of this mini-batch on this rank
            for k, (idx, weight, ids, attn, target, adv, old, ref_lp) in enumerate(per):
                t1 = time.time()
                logp, ent = response_logprobs(policy, ids, attn, target, chunk,
                                              with_entropy="grad" if entropy_coef > 0 else True)  # [n, L]
                loss_tok, clipped, k3 = token_loss(logp, old, ref_lp, adv, tcfg.eps_low, tcfg.eps_high, tcfg.kl_coef,
                                                   kl_clamp)
                if entropy_coef > 0:
                    loss_tok = loss_tok - entropy_coef * ent
                loss = aggregate(loss_tok, target, tcfg.loss_agg, mini["norm"], world_size) * weight
                if found is None and weight:
                    hit = first_nonfinite([("advantages", adv), ("behavior log-probs", old),
                                           ("reference log-probs", ref_lp), ("log-probs", logp), ("loss", loss_tok)], target)
                    if hit is not None:
                        found = (hit[0], sorted({rows[idx[i]] for i in hit[1]}))
                acc.backward(loss, k == len(per) - 1)
                t_train += time.time() - t1
                if weight:
                    mask = target.float()
                    m["loss_sum"] += loss.item() / world_size
                    m["kl_sum"] += float((k3.detach() * mask).sum())
                    m["clip_sum"] += float((clipped.float() * mask).sum())
                    m["entropy_sum"] += float((ent.detach() * mask).sum())
                    if epoch == 0:
                        m["tokens"] += float(mask.sum())
                    if epoch == 0 and engine_lp is not None:  # does the engine sample from the weights this rank trains?
                        eng = torch.zeros_like(old)
                        eng[target] = torch.tensor([x for i in idx for x in engine_lp[i]], dtype=old.dtype,
                                                   device=old.device)
                        gap = (eng - old).abs() * mask
                        m["engine_gap_sum"] += float(gap.sum())
                        m["engine_gap_max"] = max(m["engine_gap_max"], float(gap.max()))
            t2 = time.time()
            steps += 1
            if acc.any_rank(found is not None):  # every rank takes this branch together
                acc.skip()
                skipped += 1
                out["grad_norm"] = 0.0
                found_any = found_any or found or ("on another rank", [])
            else:
                acc.step()
                gn = float(acc.grad_norm())
                out["grad_norm"] = gn
                if not math.isfinite(gn):  # non-finite only in backward: ZeRO 1-2 skipped it
                    skipped += 1
                    found_any = found_any or ("gradient", sorted(set(rows)))
            t_train += time.time() - t2
    for k in ("loss_sum", "kl_sum", "clip_sum", "entropy_sum"):
        m[k] /= epochs  # sums over one pass: the driver divides by the tokens of one pass
    m["loss_sum"] /= len(minis)
    out.update(m, micro_batches=sum(len(mi["micro"]) for mi in minis), optimizer_steps=steps,
               logprob_seconds=t_logp, train_seconds=t_train, skipped_step=min(skipped, 1) if steps == 1 else skipped)
    if skipped:
        what, ids_ = found_any
        out["nonfinite"] = {"what": what, "prompt_ids": ids_}
    return out
