"""The off-policy objective and the drift KL, on cases small enough to do by hand."""

import math

import pytest
import torch

from cropi.influence.trajectories import TrajectoryBatch
from cropi.influence.objective import buffer_drift, kl_from_behavior_samples, token_weights
from tests.support.reference_engine import k3, prompt_kl, prompt_objective


def _hand_batch():
    # Prompt 0 has trajectories a (2 response tokens, A = 1) and b (1 token, A = -1);
    # prompt 1 has trajectory c (3 tokens, A = 2). Rows are [N=3, L=5]; position 0 is the prompt.
    target = torch.tensor([[0, 1, 1, 0, 0],
                           [0, 0, 1, 0, 0],
                           [0, 1, 1, 1, 0]], dtype=torch.bool)
    attn = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    batch = TrajectoryBatch(input_ids=torch.ones(3, 5, dtype=torch.long), attention_mask=attn, target_mask=target,
                            behavior_logp=torch.where(target, torch.full((3, 5), -1.0), torch.zeros(3, 5)),
                            advantage=torch.tensor([1.0, -1.0, 2.0]), prompt_index=torch.tensor([0, 0, 1]),
                            num_prompts=2)
    # log pi - log beta: a -> [0, ln 2] (rho 1, 2); b -> [ln 0.5] (rho 0.5); c -> [0, 0, 0] (rho 1)
    log_ratio = torch.zeros(3, 5)
    log_ratio[0, 2] = math.log(2.0)
    log_ratio[1, 2] = math.log(0.5)
    logp = torch.where(target, batch.behavior_logp + log_ratio, torch.zeros(3, 5))
    return batch.validate(), logp


def test_objective_hand_computed():
    batch, logp = _hand_batch()
    logp.requires_grad_(True)
    j = prompt_objective(logp, batch)
    # J_0 = 1/2 * [ A_a * mean(1, 2) + A_b * mean(0.5) ] = 1/2 * [1 * 1.5 + (-1) * 0.5] = 0.5
    # J_1 = 1/1 * [ A_c * mean(1, 1, 1) ] = 2 * 1 = 2
    torch.testing.assert_close(j, torch.tensor([0.5, 2.0]), rtol=0, atol=1e-6)
    # dJ_p/dlogp_t = A / |tau| / K_p * rho_t: a -> 1/2/2 * [1, 2] = [0.25, 0.5]; b -> -1/1/2 * 0.5 = -0.25;
    # c -> 2/3/1 * 1 = 2/3 for each of its 3 tokens.
    (grad,) = torch.autograd.grad(j.sum(), logp)
    expect = torch.zeros(3, 5)
    expect[0, 1:3] = torch.tensor([0.25, 0.5])
    expect[1, 2] = -0.25
    expect[2, 1:4] = 2 / 3
    torch.testing.assert_close(grad, expect, rtol=0, atol=1e-6)


def test_token_weights_and_padding_never_reach_exp():
    batch, logp = _hand_batch()
    w = token_weights(batch.target_mask, batch.advantage, batch.prompt_index, batch.num_prompts)
    assert w[0, 1] == 0.25 and w[1, 2] == -0.5 and abs(float(w[2, 3]) - 2 / 3) < 1e-7 and w[0, 3] == 0
    logp = logp.clone()
    logp[0, 4] = 1e30  # garbage on a padded position must not produce inf/NaN
    assert torch.isfinite(prompt_objective(logp, batch)).all()


def test_zero_advantage_prompt_has_zero_objective_and_gradient():
    batch, logp = _hand_batch()
    batch.advantage = torch.tensor([0.0, 0.0, 2.0])
    logp.requires_grad_(True)
    j = prompt_objective(logp, batch)
    (grad,) = torch.autograd.grad(j[0], logp)
    assert j[0] == 0 and bool((grad == 0).all())


def test_kl_estimator_is_unbiased_under_behavior_samples():
    # Next-token distributions pi, beta over 4 tokens; the buffer samples tokens from beta, so the
    # expectation is sum_x beta(x) * estimator(x), which must equal the exact KL(pi || beta).
    pi = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    beta = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    exact = float((pi * (pi / beta).log()).sum())  # 0.456...
    est = kl_from_behavior_samples(pi.log(), beta.log())
    assert bool((est >= 0).all())
    assert abs(float((beta * est).sum()) - exact) < 1e-12
    # the trainer's k3 on beta samples estimates chi2(beta||pi) - KL(beta||pi) instead
    chi2 = float(((beta - pi) ** 2 / pi).sum())
    kl_b = float((beta * (beta / pi).log()).sum())
    assert abs(float((beta * k3(pi.log(), beta.log())).sum()) - (chi2 - kl_b)) < 1e-12
    assert abs((chi2 - kl_b) - exact) > 0.05


def test_prompt_kl_is_token_mean_and_zero_on_policy():
    batch, logp = _hand_batch()
    kl, n = prompt_kl(batch.behavior_logp.clone(), batch)
    assert bool((kl == 0).all()) and n.tolist() == [3.0, 3.0]
    kl, _ = prompt_kl(logp, batch)
    # prompt 0 tokens: r = 1, 2, 0.5 -> r ln r - r + 1 = 0, 2 ln 2 - 1, 0.5 ln 0.5 + 0.5
    expect0 = (0 + (2 * math.log(2) - 1) + (0.5 * math.log(0.5) + 0.5)) / 3
    assert abs(float(kl[0]) - expect0) < 1e-6 and float(kl[1]) == 0.0


def test_buffer_drift_is_token_weighted():
    # prompts with token-mean KL 0.1 over 2 tokens and 0.4 over 6 tokens: (0.2 + 2.4) / 8 = 0.325
    assert buffer_drift(torch.tensor([0.1, 0.4]), torch.tensor([2, 6])) == pytest.approx(0.325)
    # a plain mean over prompts would give 0.25; a prompt without tokens weighs nothing
    assert buffer_drift(torch.tensor([0.1, 0.4, 9.0]), torch.tensor([2, 6, 0])) == pytest.approx(0.325)
    assert buffer_drift(torch.zeros(0), torch.zeros(0, dtype=torch.long)) == 0.0
