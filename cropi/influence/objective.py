"""The off-policy objective whose gradient is a prompt's influence vector, and the drift KL.

For prompt s0 with stored trajectories tau_1..tau_K (sampled from the behavior policy beta):

    J(s0) = 1/K * sum_k 1/|tau_k| * sum_{t in tau_k} rho_{k,t} * A_k,
    rho_{k,t} = exp(log pi_theta(x_t | s_t) - log beta(x_t | s_t)),

i.e. the un-clipped, KL-free importance-weighted GRPO objective (CROPI step 2); g(s0) = dJ/dtheta.
Normalisation is named: token-mean within a trajectory, then mean over the prompt's K_p
trajectories (K_p may differ between prompts). At theta = beta every rho is 1 and g is the
on-policy policy gradient sum_t A grad log pi / |tau| / K.

All functions here are pure tensor-in/tensor-out. Token tensors may have any shape ([N, L] dense
rows, or a [P, T] per-prompt layout); `weight` carries the 1/|tau| * A / K_p factor per token and
is 0 off the response, `group` says which prompt each token belongs to.
"""

from __future__ import annotations

import torch

from cropi.model.sequences import token_logp  # noqa: F401  (the shared log-prob primitive, re-exported for the engine)


def token_weights(target_mask: torch.Tensor, advantage: torch.Tensor, prompt_index: torch.Tensor,
                  num_prompts: int, group_size: torch.Tensor | None = None) -> torch.Tensor:
    """w[n, j] = A_n / |tau_n| / K_p on response tokens of row n (prompt p), 0 elsewhere.
    K_p counts the prompt's rows in the batch unless `group_size` [P] gives it: a batch that
    holds only part of a prompt's trajectories then yields that part's exact share of J."""
    lengths = target_mask.sum(1).clamp(min=1).float()  # [N] |tau_n|
    per_prompt = torch.bincount(prompt_index, minlength=num_prompts).float() if group_size is None \
        else group_size.to(lengths.device).float()  # [P] K_p
    row = advantage.float() / lengths / per_prompt[prompt_index]  # [N]
    return target_mask.float() * row[:, None]  # [N, L]


def offpolicy_objective(logp: torch.Tensor, behavior_logp: torch.Tensor, weight: torch.Tensor,
                        mask: torch.Tensor, group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """J per group: sum over masked tokens of weight * exp(logp - behavior_logp). -> [G]

    The mask (not the weight) decides which tokens exist, so padding never reaches exp().
    """
    log_ratio = torch.where(mask, logp - behavior_logp, torch.zeros_like(logp))  # [...]
    terms = torch.where(mask, weight * torch.exp(log_ratio), torch.zeros_like(logp))  # [...]
    out = torch.zeros(num_groups, dtype=terms.dtype, device=terms.device)
    return out.index_add(0, group.reshape(-1), terms.reshape(-1))  # [G]


def kl_from_behavior_samples(logp: torch.Tensor, behavior_logp: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(pi_theta || beta) from tokens sampled from beta.

    With r = pi_theta / beta at the sampled token, r*log(r) - r + 1 has expectation under beta
    equal to the exact KL(pi_theta || beta) of the next-token distributions (the E_beta[r - 1] = 0
    control variate makes every term >= 0). The GRPO trainer's k3 = exp(b-a) - (b-a) - 1
    (a = log pi_theta, b = log beta) assumes tokens sampled from pi_theta; on buffer tokens,
    sampled from beta, its expectation is chi^2(beta||pi) - KL(beta||pi), which equals
    KL(pi||beta) only to second order in the drift, and the drift monitor exists for large drift.
    """
    log_r = logp - behavior_logp  # [...]
    r = torch.exp(log_r)
    return r * log_r - r + 1.0


def buffer_drift(kl: torch.Tensor, num_tokens: torch.Tensor) -> float:
    """The drift monitor's number: the token-weighted mean of per-prompt token-mean KL estimates
    over the buffer, i.e. sum_p kl_p * n_p / sum_p n_p (0 for no tokens)."""
    n = num_tokens.double()
    return float((kl.double() * n).sum() / n.sum().clamp(min=1.0))
