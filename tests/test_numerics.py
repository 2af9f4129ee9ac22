"""NaN/inf in a GRPO step: caught where it first appears, reported with the prompt ids, and the
step not applied (cropi.algo.numerics, cropi.trainer.step). The plain accumulator here; the
DeepSpeed path shares grpo_step and is checked in test_trainer.py."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from cropi.algo.numerics import first_nonfinite, nonfinite_rows
from cropi.model.loading import load_model, load_tokenizer
from cropi.trainer.step import Accumulator, grpo_step


def test_nonfinite_rows_respects_the_mask():
    x = torch.tensor([[0.0, 1.0], [math.nan, 0.0], [0.0, math.inf]])
    assert nonfinite_rows(x) == [1, 2]
    assert nonfinite_rows(x, torch.tensor([[1, 1], [0, 1], [1, 1]])) == [2]  # row 1's NaN is padding
    assert first_nonfinite([("a", torch.zeros(3, 2)), ("b", x)]) == ("b", [1, 2])
    assert first_nonfinite([("a", torch.zeros(3, 2))]) is None


TCFG = SimpleNamespace(logits_chunk_tokens=8, eps_low=0.2, eps_high=0.2, kl_coef=0.001, loss_agg="token_mean")


@pytest.fixture()
def setup(tiny_model):
    torch.manual_seed(0)
    tok = load_tokenizer(tiny_model)
    policy = load_model(tiny_model)
    ref = copy.deepcopy(policy).eval()
    prompts = [tok(p)["input_ids"] for p in ("12+5=", "3*4=", "9-1=")]
    responses = [tok(r, add_special_tokens=False)["input_ids"] for r in ("17", "12", "8")]
    shard = {"prompt_ids": prompts, "response_ids": responses, "advantages": [1.0, -0.5, -0.5],
             "row_ids": [40, 41, 42], "pad_id": tok.pad_token_id}
    return policy, ref, shard, tok


def _params(m):
    return {k: v.detach().clone() for k, v in m.named_parameters()}


def test_a_finite_step_is_applied(setup):
    policy, ref, shard, _ = setup
    opt = torch.optim.SGD(policy.parameters(), lr=0.1)
    before = _params(policy)
    out = grpo_step(Accumulator.plain(policy, opt), ref, shard, TCFG, 6.0, 1, "cpu")
    assert out["skipped_step"] == 0 and "nonfinite" not in out and math.isfinite(out["grad_norm"])
    assert any(not torch.equal(before[k], v) for k, v in policy.named_parameters())


def test_nan_logprobs_are_named_by_prompt_and_the_step_is_not_applied(setup):
    policy, ref, shard, tok = setup
    bad_token = shard["response_ids"][2][0]  # "8": only in trajectory 2's response ...
    assert all(bad_token not in r for r in shard["response_ids"][:2])
    assert all(bad_token not in p for p in shard["prompt_ids"])  # ... and in no prompt
    with torch.no_grad():
        policy.get_input_embeddings().weight[bad_token] = math.nan
    opt = torch.optim.SGD(policy.parameters(), lr=0.1)
    before = _params(policy)
    out = grpo_step(Accumulator.plain(policy, opt), ref, shard, TCFG, 6.0, 1, "cpu")
    assert out["skipped_step"] == 1
    assert out["nonfinite"] == {"what": "behavior log-probs", "prompt_ids": [42]}
    after = _params(policy)
    for k in before:  # nothing moved (the NaN row was NaN before, and is still exactly that)
        assert torch.equal(torch.nan_to_num(before[k]), torch.nan_to_num(after[k])), k
    assert all(p.grad is None for p in policy.parameters())  # the NaN gradients were dropped


def test_nan_advantage_is_caught_first(setup):
    policy, ref, shard, _ = setup
    shard = {**shard, "advantages": [1.0, math.nan, 0.0]}
    opt = torch.optim.SGD(policy.parameters(), lr=0.1)
    out = grpo_step(Accumulator.plain(policy, opt), ref, shard, TCFG, 6.0, 1, "cpu")
    assert out["skipped_step"] == 1 and out["nonfinite"] == {"what": "advantages", "prompt_ids": [41]}
