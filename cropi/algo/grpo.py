"""The GRPO policy loss, per token, and its named aggregations.

Per response token t of trajectory i (advantage A_i):
    ratio_t = exp(logp_t - old_logp_t)
    pg_t    = -min(ratio_t * A_i, clip(ratio_t, 1 - eps_low, 1 + eps_high) * A_i)
    k3_t    = exp(ref_t - logp_t) - (ref_t - logp_t) - 1         (Schulman's k3 KL estimator, >= 0)
    loss_t  = pg_t + kl_coef * k3_t
Aggregation over the global batch (all ranks), never over one rank's shard alone:
    token_mean            sum_t loss_t / (number of response tokens in the global batch)
    seq_mean_token_mean   mean over global sequences of (sum of the sequence's loss_t / its length)
    seq_mean_token_sum    mean over global sequences of (sum of the sequence's loss_t)
    constant              sum_t loss_t / constant (Dr. GRPO; verl's seq-mean-token-sum-norm)
verl's hyphenated spellings (token-mean, ...) are accepted (AGG_ALIASES).
`aggregate` takes the global normaliser and the world size explicitly: a data-parallel engine
averages gradients over ranks, so each rank's share is multiplied back by world_size, and the
sharded update equals the one-rank update on the joined batch.
"""

from __future__ import annotations

import torch


# verl's loss_agg_mode spellings, and what each is here (seq-mean-token-sum-norm is Dr. GRPO's
# constant normaliser: loss_agg constant with trainer.loss_norm_constant)
AGG_ALIASES = {"token-mean": "token_mean", "seq-mean-token-mean": "seq_mean_token_mean",
               "seq-mean-token-sum": "seq_mean_token_sum", "seq-mean-token-sum-norm": "constant"}
K3_LOG_RATIO_CLAMP = 20.0  # verl's low_var_kl: ref - logp clamped to +-20 before exp


def agg_mode(mode: str) -> str:
    return AGG_ALIASES.get(mode, mode)


def token_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, adv: torch.Tensor,
               eps_low: float, eps_high: float, kl_coef: float, kl_clamp: float = 0.0):
    """logp, old_logp, ref_logp [N, T]; adv [N] -> (loss [N, T], clipped [N, T] bool, k3 [N, T]).
    kl_clamp > 0 clamps k3 to [-kl_clamp, kl_clamp] after clamping its log-ratio to +-20, as
    verl's low_var_kl does (10); 0 leaves it unclamped."""
    ratio = torch.exp(logp - old_logp)  # [N, T]
    a = adv[:, None]  # [N, 1]
    unclipped = ratio * a
    clipped_obj = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * a
    pg = -torch.minimum(unclipped, clipped_obj)  # [N, T]
    d = ref_logp - logp
    if kl_clamp > 0:
        d = torch.clamp(d, -K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
    k3 = torch.exp(d) - d - 1  # [N, T]
    if kl_clamp > 0:
        k3 = torch.clamp(k3, -kl_clamp, kl_clamp)
    clipped = clipped_obj < unclipped  # the clip was the active branch
    return pg + kl_coef * k3, clipped, k3


def normaliser(mask: torch.Tensor, mode: str, constant: float = 0.0) -> float:
    """The global normaliser of a batch (compute on the joined batch, or sum over ranks)."""
    mode = agg_mode(mode)
    if mode == "token_mean":
        return float(mask.sum())
    if mode in ("seq_mean_token_mean", "seq_mean_token_sum"):
        return float(mask.shape[0])
    if mode == "constant":
        if constant <= 0:
            raise ValueError("loss_agg=constant needs a positive constant")
        return float(constant)
    raise ValueError(f"unknown loss aggregation {mode!r}")


def aggregate(loss: torch.Tensor, mask: torch.Tensor, mode: str, global_norm: float, world_size: int) -> torch.Tensor:
    """This rank's scalar loss: its part of the global aggregate, times world_size (ranks average)."""
    m = mask.to(loss.dtype)  # [N, T]
    mode = agg_mode(mode)
    if mode == "seq_mean_token_mean":
        per_seq = (loss * m).sum(1) / m.sum(1).clamp(min=1)  # [N]
        total = per_seq.sum()
    else:
        total = (loss * m).sum()
    return total * world_size / global_norm
