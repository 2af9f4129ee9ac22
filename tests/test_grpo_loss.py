"""Hand-computed GRPO loss cases (torchtune style: the arithmetic is in the comments)."""

import math

import pytest
import torch

from cropi.algo.advantages import group_advantages
from cropi.algo.grpo import aggregate, normaliser, token_loss


def test_clip_upper_side_positive_advantage():
    # ratio = e^1 = 2.718 > 1.2, A = +1: min(2.718*1, 1.2*1) = 1.2 -> loss -1.2, clipped
    logp, old = torch.tensor([[0.0]]), torch.tensor([[-1.0]])
    loss, clipped, _ = token_loss(logp, old, logp, torch.tensor([1.0]), 0.2, 0.2, kl_coef=0.0)
    assert loss.item() == pytest.approx(-1.2) and clipped.item()


def test_clip_lower_side_negative_advantage():
    # ratio = e^-1 = 0.368 < 0.8, A = -2: min(0.368*-2, 0.8*-2) = min(-0.736, -1.6) = -1.6 -> loss 1.6
    logp, old = torch.tensor([[-1.0]]), torch.tensor([[0.0]])
    loss, clipped, _ = token_loss(logp, old, logp, torch.tensor([-2.0]), 0.2, 0.2, 0.0)
    assert loss.item() == pytest.approx(1.6) and clipped.item()


def test_no_clip_when_pessimistic_branch_is_unclipped():
    # ratio = e^1, A = -1: min(-2.718, -1.2) = -2.718 -> loss 2.718, the clip is not active
    logp, old = torch.tensor([[0.0]]), torch.tensor([[-1.0]])
    loss, clipped, _ = token_loss(logp, old, logp, torch.tensor([-1.0]), 0.2, 0.2, 0.0)
    assert loss.item() == pytest.approx(math.e) and not clipped.item()
    # asymmetric range: eps_high=0.28 caps ratio at 1.28 for A>0
    loss, _, _ = token_loss(logp, old, logp, torch.tensor([1.0]), 0.2, 0.28, 0.0)
    assert loss.item() == pytest.approx(-1.28)


def test_k3_kl_term():
    # ref - logp = d = -1: k3 = e^-1 - (-1) - 1 = 0.3679; ratio 1, A 0 -> loss = 0.1 * 0.3679
    logp, ref = torch.tensor([[0.0]]), torch.tensor([[-1.0]])
    loss, _, k3 = token_loss(logp, logp, ref, torch.tensor([0.0]), 0.2, 0.2, kl_coef=0.1)
    assert k3.item() == pytest.approx(math.exp(-1))
    assert loss.item() == pytest.approx(0.1 * math.exp(-1))
    # k3 is 0 when policy equals reference
    _, _, k3 = token_loss(logp, logp, logp, torch.tensor([1.0]), 0.2, 0.2, 0.1)
    assert k3.item() == 0.0


def test_aggregations_by_hand():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # token_mean: (1+2+3+4) / 4 tokens = 2.5
    assert aggregate(loss, mask, "token_mean", normaliser(mask, "token_mean"), 1).item() == pytest.approx(2.5)
    # seq_mean_token_mean: mean(6/3, 4/1) = 3.0
    assert aggregate(loss, mask, "seq_mean_token_mean", normaliser(mask, "seq_mean_token_mean"), 1).item() == 3.0
    # constant 20: 10 / 20 = 0.5
    assert aggregate(loss, mask, "constant", normaliser(mask, "constant", 20.0), 1).item() == 0.5


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "constant"])
def test_sharded_gradient_equals_one_rank(mode):
    """Split a batch over 2 fake ranks; the rank-averaged gradient equals the full-batch one."""
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(6, generator=g, requires_grad=True)
    feats = torch.randn(8, 5, 6, generator=g)  # [N, T, D]: logp = feats @ theta
    mask = (torch.rand(8, 5, generator=g) > 0.3).long()
    mask[:, 0] = 1
    old = torch.randn(8, 5, generator=g) * 0.1
    adv = torch.randn(8, generator=g)

    def rank_loss(idx, world):
        logp = feats[idx] @ theta * 0.1  # [n, T]
        loss, _, _ = token_loss(logp, old[idx], old[idx], adv[idx], 0.2, 0.2, 0.05)
        return aggregate(loss, mask[idx], mode, normaliser(mask, mode, 17.0), world)

    full = torch.autograd.grad(rank_loss(torch.arange(8), 1), theta)[0]
    shards = [torch.tensor([0, 3, 5, 6]), torch.tensor([1, 2, 4, 7])]  # uneven token counts per rank
    avg = sum(torch.autograd.grad(rank_loss(ix, 2), theta)[0] for ix in shards) / 2
    torch.testing.assert_close(avg, full, rtol=1e-6, atol=1e-7)
    # a per-rank normaliser (the classic bug) would not match for token_mean
    if mode == "token_mean":
        def local(ix):
            logp = feats[ix] @ theta * 0.1
            loss, _, _ = token_loss(logp, old[ix], old[ix], adv[ix], 0.2, 0.2, 0.05)
            return aggregate(loss, mask[ix], mode, normaliser(mask[ix], mode), 1)
        wrong = sum(torch.autograd.grad(local(ix), theta)[0] for ix in shards) / 2
        assert not torch.allclose(wrong, full, rtol=1e-4)


def test_group_advantages():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    adv, mean, std = group_advantages(r, "group")
    # group 0: mean 0.5, population std 0.5 -> A = +-1 (up to eps); group 1: all equal -> A = 0
    torch.testing.assert_close(adv[0], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-5, rtol=0)
    assert (adv[1] == 0).all() and mean.tolist() == [0.5, 1.0] and std.tolist() == [0.5, 0.0]
    adv, _, _ = group_advantages(r, "none")
    assert adv[0].tolist() == [0.5, -0.5, -0.5, 0.5]
    adv, _, _ = group_advantages(r, "batch")  # batch std of [1,0,0,1,1,1,1,1] = sqrt(0.1875)
    torch.testing.assert_close(adv[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / (0.1875 ** 0.5 + 1e-6))
