"""Memory-bounded training math: the token-budget plan, and the chunked LM head against the
plain full-logits computation (values and gradients)."""

import pytest
import torch

from cropi.model.sequences import budget_batches, collate, response_logprobs
from cropi.trainer import batching


def test_budget_batches_respect_the_budget_and_keeps_every_sequence():
    lengths = [5, 30, 12, 7, 30, 1, 64]
    batches = budget_batches(lengths, 64)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:  # padded size = count x longest <= budget, unless one sequence alone exceeds it
        assert len(b) * max(lengths[i] for i in b) <= 64
    assert budget_batches(lengths, 0) == [sorted(range(7), key=lambda i: (-lengths[i], i))]
    assert budget_batches([100, 3], 50) == [[0], [1]]  # too long alone: its own micro-batch


def test_plan_gives_every_rank_the_same_count():
    plan = batching.plan([[10, 10, 10, 10], [10]], 20)
    assert [len(p) for p in plan] == [2, 2]
    assert plan[1] == [[0], []]  # the short rank runs an empty (zero-weight) micro-batch


def _full_logits_logp(model, ids, attn, target):
    logits = model(input_ids=ids, attention_mask=attn).logits.float()  # [N, L, V]
    lsm = torch.log_softmax(logits[:, :-1], dim=-1)
    lp = torch.nn.functional.pad(lsm.gather(-1, ids[:, 1:, None])[..., 0], (1, 0))
    ent = torch.nn.functional.pad(-(lsm.exp() * lsm).sum(-1), (1, 0))
    return torch.where(target, lp, 0.0), torch.where(target, ent, 0.0)


@pytest.fixture(scope="module")
def qwen2():
    """A small random Qwen2-architecture model: tied embeddings, q/k/v biases."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=997, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(cfg).float()


@pytest.mark.parametrize("chunk", [3, 1024])
def test_chunked_head_equals_full_logits_in_value_and_gradient(qwen2, chunk):
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 997, (n,), generator=g).tolist() for n in (3, 5, 2)]
    responses = [torch.randint(0, 997, (n,), generator=g).tolist() for n in (4, 1, 6)]
    ids, attn, target = collate(prompts, responses, pad_id=0)
    w = torch.randn(ids.shape, generator=g)
    lp, ent = response_logprobs(qwen2, ids, attn, target, chunk_tokens=chunk, with_entropy=True)
    (lp * w).sum().backward()
    chunked = {n: p.grad.clone() for n, p in qwen2.named_parameters()}
    qwen2.zero_grad()
    ref_lp, ref_ent = _full_logits_logp(qwen2, ids, attn, target)
    (ref_lp * w).sum().backward()
    torch.testing.assert_close(lp, ref_lp, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ent, ref_ent, rtol=1e-5, atol=1e-6)
    for n, p in qwen2.named_parameters():
        # float32 sums in another order: differences ~3e-7 of the largest entry
        torch.testing.assert_close(chunked[n], p.grad, rtol=1e-4, atol=2e-6 * float(p.grad.abs().max()), msg=n)
    assert float(lp.detach().abs().sum()) > 1.0 and bool((lp[~target] == 0).all())
    qwen2.zero_grad()
