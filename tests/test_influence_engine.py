"""The batched engine against the one-backward-per-prompt reference, on the tiny checkpoint.

Trajectories have different lengths and K differs between prompts; two prompts have all
advantages zero (their gradient must be exactly 0). Behavior log-probs are the model's own plus
noise, so every importance ratio differs from 1.
"""

import random

import pytest
import torch

from cropi.errors import CropiError
from cropi.influence import gradients
from cropi.influence.trajectories import make_batch
from cropi.influence.coords import flatten, layer_seed, sample_coordinates, sample_indices
from cropi.influence.params import chosen_linears
from tests.support import reference_engine as reference

ZERO_IDS = (103, 106)  # prompts whose rewards were all equal


def _rel(a, b):
    """Per-prompt relative error ||a - b|| / ||b|| (0 where both are 0). [P, ...] -> [P]"""
    a, b = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    return (a - b).norm(dim=1) / b.norm(dim=1).clamp(min=1e-30)


def _rows(rng, prompts, first_id=100, pad_len=(1, 8)):
    rows = []
    for p in range(prompts):
        pid = first_id + p
        prompt = [1] + [b + 3 for b in f"{rng.randint(0, 999)}+{rng.randint(0, 99)}=".encode()]
        k = rng.choice([2, 3, 5])
        adv = [0.0] * k if pid in ZERO_IDS else [rng.gauss(0, 1) for _ in range(k)]
        for a in adv:
            resp = [b + 3 for b in str(rng.randint(0, 10 ** rng.randint(*pad_len))).encode()][:7] + [2]
            rows.append(dict(prompt_ids=prompt, response_ids=resp, behavior_logp=[0.0] * len(resp),
                             advantage=a, prompt_id=pid))
    return rows


def _with_behavior(model, rows, seed):
    """Behavior log-probs = the model's own + noise (so rho != 1)."""
    batch, ids = make_batch(rows, pad_id=0)
    with torch.no_grad():
        logp = reference.dense_logp(model, batch)
    noise = 0.3 * torch.randn(logp.shape, generator=torch.Generator().manual_seed(seed))
    batch.behavior_logp = torch.where(batch.target_mask, logp + noise, torch.zeros_like(logp))
    return batch, ids


@pytest.fixture(scope="module")
def model(tiny_model):
    from cropi.model.loading import load_model

    torch.manual_seed(0)
    return load_model(tiny_model)


@pytest.fixture(scope="module")
def batch(model):
    return _with_behavior(model, _rows(random.Random(0), 8), seed=1)[0]


@pytest.fixture(scope="module")
def coords(model):
    return sample_coordinates(model, "linear", 0.1, seed=0)


@pytest.fixture(scope="module")
def val(model, coords):
    vb = [_with_behavior(model, _rows(random.Random(s), 4, first_id=500 + 10 * s), seed=s)[0] for s in (5, 6)]
    return {"add": gradients.validation_mean_gradient(model, vb[:1], coords),
            "mul": gradients.validation_mean_gradient(model, vb[1:], coords)}


def test_raw_gradients_equal_reference(model, batch, coords):
    fast = flatten(reference.prompt_gradients(model, batch, coords), coords)  # [P, D]
    slow = flatten(reference.prompt_scores(model, batch, coords, "raw")["grads"], coords)
    assert float(_rel(fast, slow).max()) < 1e-6
    zero = [batch.prompt_ids.index(i) for i in ZERO_IDS]
    assert bool((fast[zero] == 0).all()) and bool((slow[zero] == 0).all())
    live = [p for p in range(batch.num_prompts) if p not in zero]
    assert bool((slow[live].norm(dim=1) > 1e-4).all())  # the comparison is not 0 == 0


def test_all_coordinates_without_lm_head_equal_reference(model, batch):
    coords = sample_coordinates(model, "linear_no_lm_head", 1.0, seed=0)  # p = 1: the uncut path
    assert "lm_head" not in coords
    fast = flatten(reference.prompt_gradients(model, batch, coords), coords)
    slow = flatten(reference.prompt_scores(model, batch, coords, "raw")["grads"], coords)
    assert fast.shape[1] == sum(m.weight.numel() for n, m in model.named_modules() if n in coords)
    assert float(_rel(fast, slow).max()) < 1e-6


def test_exact_mode_equals_reference(model, batch, coords, val):
    fast = gradients.prompt_scores(model, batch, coords, "exact", val_grads=val)
    slow = reference.prompt_scores(model, batch, coords, "exact", val_grads=val)
    assert set(fast["dots"]) == {"add", "mul"}
    for s in fast["dots"]:
        assert float((fast["dots"][s] - slow["dots"][s]).abs().max()) <= 1e-6 * float(slow["dots"][s].abs().max())
    assert float(_rel(fast["norms"][:, None], slow["norms"][:, None]).max()) < 1e-6
    assert fast["zero_grad"].tolist() == slow["zero_grad"].tolist()
    assert [batch.prompt_ids[p] for p in torch.nonzero(fast["zero_grad"]).flatten().tolist()] == list(ZERO_IDS)
    for key in ("kl", "objective"):
        torch.testing.assert_close(fast[key], slow[key], rtol=1e-5, atol=1e-7)
    assert fast["num_tokens"].tolist() == slow["num_tokens"].tolist()
    assert bool((fast["kl"] > 0).all())  # the behaviour noise is visible to the drift monitor


def test_projected_mode_equals_reference(model, batch, coords):
    kw = dict(proj_dim=256, proj_kind="rademacher", seed=3)
    fast = gradients.prompt_scores(model, batch, coords, "projected", **kw)["projected"]
    slow = reference.prompt_scores(model, batch, coords, "projected", **kw)["projected"]
    assert fast.shape == (batch.num_prompts, 256)
    assert float(_rel(fast, slow).max()) < 5e-5


def test_projection_same_across_calls_and_batch_splits(model, batch, coords):
    """Two actors with different halves of the prompts, and a restart, give the same rows."""
    kw = dict(proj_dim=128, proj_kind="rademacher", seed=9)
    whole = gradients.prompt_scores(model, batch, coords, "projected", **kw)["projected"]
    again = gradients.prompt_scores(model, batch, coords, "projected", **kw)["projected"]
    assert torch.equal(whole, again)
    for half in ([0, 1, 2, 3], [4, 5, 6, 7]):
        keep = torch.isin(batch.prompt_index, torch.tensor(half))
        sub = batch.rows(keep)
        sub.prompt_index = torch.searchsorted(torch.tensor(half), sub.prompt_index)
        sub.num_prompts, sub.prompt_ids = len(half), tuple(batch.prompt_ids[p] for p in half)
        part = gradients.prompt_scores(model, sub, coords, "projected", **kw)["projected"]
        # a half may be padded narrower than the whole batch; the float32 HF forward then moves
        # log-probs by ~5e-6 (see tests/support/reference_engine.py), hence not bitwise but within 5e-5
        assert float(_rel(part, whole[half]).max()) < 5e-5


def test_validation_mean_gradient_is_the_mean_of_per_prompt_gradients(model, batch, coords):
    halves = []
    for lo, hi in ((0, 4), (4, 8)):
        keep = (batch.prompt_index >= lo) & (batch.prompt_index < hi)
        sub = batch.rows(keep)
        sub.prompt_index, sub.num_prompts, sub.prompt_ids = sub.prompt_index - lo, hi - lo, batch.prompt_ids[lo:hi]
        halves.append(sub)
    mean = flatten(gradients.validation_mean_gradient(model, halves, coords), coords)  # [D]
    per_prompt = flatten(reference.prompt_scores(model, batch, coords, "raw")["grads"], coords)  # [P, D]
    assert float(_rel(mean[None], per_prompt.mean(0)[None])[0]) < 1e-6


def test_bfloat16_gradients_are_close_to_reference(model, batch, coords, val):
    fast = gradients.prompt_scores(model, batch, coords, "exact", val_grads=val, grad_dtype="bfloat16")
    slow = reference.prompt_scores(model, batch, coords, "exact", val_grads=val, grad_dtype="float32")
    live = ~fast["zero_grad"]
    assert float(_rel(fast["norms"][live, None], slow["norms"][live, None]).max()) < 2e-2
    cos_fast = fast["dots"]["add"][live] / fast["norms"][live]
    cos_slow = slow["dots"]["add"][live] / slow["norms"][live]
    assert float((cos_fast - cos_slow).abs().max()) < 2e-2 * float(cos_slow.abs().max())


def test_non_finite_gradient_names_the_prompt(model, batch, coords, val):
    bad = batch.rows(torch.ones(batch.num_rows, dtype=torch.bool))
    row = int(torch.nonzero(bad.prompt_index == 4)[0])
    col = int(torch.nonzero(bad.target_mask[row])[0])
    bad.behavior_logp = bad.behavior_logp.clone()
    bad.behavior_logp[row, col] = -1e30  # rho = exp(+1e30) = inf for prompt 104 only
    for mode in ("exact", "projected", "raw"):
        with pytest.raises(CropiError, match=r"prompt id\(s\) \[104\]"):
            gradients.prompt_scores(model, bad, coords, mode, val_grads=val, proj_dim=64)
    with pytest.raises(CropiError, match=r"\[104\]"):
        reference.prompt_scores(model, bad, coords, "raw")


def test_float16_overflow_names_the_prompt(model, batch, coords):
    big = batch.rows(torch.ones(batch.num_rows, dtype=torch.bool))
    big.advantage = torch.where(big.prompt_index == 2, big.advantage * 1e9, big.advantage)
    with pytest.raises(CropiError, match=r"\[102\].*float16"):
        gradients.prompt_scores(model, big, coords, "projected", proj_dim=64, grad_dtype="float16")
    out = gradients.prompt_scores(model, batch, coords, "projected", proj_dim=64, grad_dtype="float16")
    assert bool(torch.isfinite(out["projected"]).all())


def test_works_inside_no_grad_and_inference_mode(model, batch, coords):
    want = gradients.prompt_scores(model, batch, coords, "projected", proj_dim=32)["projected"]
    with torch.no_grad():
        assert torch.equal(gradients.prompt_scores(model, batch, coords, "projected", proj_dim=32)["projected"], want)
    with torch.inference_mode():
        assert torch.equal(gradients.prompt_scores(model, batch, coords, "projected", proj_dim=32)["projected"], want)


def test_all_zero_batch_and_model_state_restored(model, batch, coords, val):
    flags = [p.requires_grad for p in model.parameters()]
    model.train()
    zero = batch.rows(torch.ones(batch.num_rows, dtype=torch.bool))
    zero.advantage = torch.zeros_like(zero.advantage)
    out = gradients.prompt_scores(model, zero, coords, "exact", val_grads=val)
    assert bool(out["zero_grad"].all()) and bool((out["norms"] == 0).all()) and bool((out["kl"] > 0).all())
    out = gradients.prompt_scores(model, batch, coords, "projected", proj_dim=32)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(not m._forward_hooks for m in model.modules())
    model.eval()


def test_tied_lm_head_includes_the_input_embedding_gradient():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=259, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
    tied = LlamaForCausalLM(cfg)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    b, _ = _with_behavior(tied, _rows(random.Random(3), 5), seed=2)
    coords = sample_coordinates(tied, "linear", 0.3, seed=1)
    fast = flatten(reference.prompt_gradients(tied, b, coords), coords)
    slow = flatten(reference.prompt_scores(tied, b, coords, "raw")["grads"], coords)
    assert float(_rel(fast, slow).max()) < 1e-6


def test_parameter_choice_and_coordinate_sampling(model):
    names = list(chosen_linears(model, "linear"))
    assert names[-1] == "lm_head" and len(names) == 2 * 7 + 1
    assert "lm_head" not in chosen_linears(model, "linear_no_lm_head")
    with pytest.raises(CropiError, match="params"):
        chosen_linears(model, "all")
    a = sample_coordinates(model, "linear", 0.1, seed=0)
    b = sample_coordinates(model, "linear", 0.1, seed=0)
    mods = dict(model.named_modules())
    for n in names:
        idx, numel = a[n], mods[n].weight.numel()
        assert torch.equal(idx, b[n]) and idx.numel() == -(-numel // 10)
        assert bool((idx[1:] > idx[:-1]).all()) and int(idx[0]) >= 0 and int(idx[-1]) < numel
    q0, q1 = "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"
    assert not torch.equal(a[q0], a[q1])  # same shape, different per-layer seed
    assert not torch.equal(a[q0], sample_coordinates(model, "linear", 0.1, seed=1)[q0])
    assert torch.equal(sample_indices(1000, 1.0, 3), torch.arange(1000))
    assert layer_seed(0, "lm_head") == int.from_bytes(__import__("hashlib").sha256(b"lm_head").digest()[:4], "little")
    big = sample_indices(3 * 2 ** 20 + 5, 0.01, 4)  # stratified over 2^20-chunks, exact count
    assert big.numel() == -(-(3 * 2 ** 20 + 5) // 100) and bool((big[1:] > big[:-1]).all())


def test_make_batch_groups_pads_and_rejects_bad_rows():
    rows = [dict(prompt_ids=[1, 5], response_ids=[7, 2], behavior_logp=[-1.0, -2.0], advantage=1.0, prompt_id=9),
            dict(prompt_ids=[1, 6, 6], response_ids=[8], behavior_logp=[-0.5], advantage=0.5, prompt_id=4),
            dict(prompt_ids=[1, 5], response_ids=[2], behavior_logp=[-3.0], advantage=-1.0, prompt_id=9)]
    b, ids = make_batch(rows, pad_id=0)
    assert ids == [9, 4] and b.prompt_index.tolist() == [0, 0, 1]  # first-seen order, grouped
    assert b.input_ids.tolist() == [[1, 5, 7, 2], [1, 5, 2, 0], [1, 6, 6, 8]]
    assert b.target_mask.tolist() == [[False, False, True, True], [False, False, True, False], [False, False, False, True]]
    assert b.behavior_logp[0].tolist() == [0.0, 0.0, -1.0, -2.0] and b.advantage.tolist() == [1.0, -1.0, 0.5]
    assert b.attention_mask.sum(1).tolist() == [4, 3, 4]
    with pytest.raises(CropiError, match=r"row 1 \(prompt_id 4\) has 2 behavior"):
        make_batch([rows[0], dict(rows[1], behavior_logp=[0.0, 0.0])], 0)
    with pytest.raises(CropiError, match="no response tokens"):
        make_batch([dict(rows[0], response_ids=[], behavior_logp=[])], 0)
    with pytest.raises(CropiError, match="no field 'advantage'"):
        make_batch([{k: v for k, v in rows[0].items() if k != "advantage"}], 0)


def test_chunked_head_equals_reference(model, batch, coords, val):
    """Head logits formed 3 positions at a time (so [G, T, vocab] never exists) change nothing."""
    fast = flatten(gradients.prompt_scores(model, batch, coords, "raw", head_chunk_tokens=3)["grads"], coords)
    slow = flatten(reference.prompt_scores(model, batch, coords, "raw")["grads"], coords)
    # float32 partial sums over chunks of 3 positions: a few 1e-6, against < 1e-6 in one chunk
    assert float(_rel(fast, slow).max()) < 5e-6
    a = gradients.prompt_scores(model, batch, coords, "exact", val_grads=val, head_chunk_tokens=3)
    b = gradients.prompt_scores(model, batch, coords, "exact", val_grads=val)
    assert float(_rel(a["norms"][:, None], b["norms"][:, None]).max()) < 5e-6  # the same partial sums (4e-6 seen on AMD EPYC)
    # the head GEMM on 3 rows or on all of them rounds differently (BLAS kernels differ by shape)
    torch.testing.assert_close(a["kl"], b["kl"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a["objective"], b["objective"], rtol=1e-5, atol=1e-6)


def _budget_rows(seed):
    rng = random.Random(seed)
    rows = _rows(rng, 6)
    for r in rows:  # a behavior policy other than the model: rho != 1
        r["behavior_logp"] = [rng.uniform(-3.0, -0.5) for _ in r["response_ids"]]
    return rows


def test_plan_passes_packs_whole_prompts_and_splits_only_oversized_ones():
    from cropi.influence.trajectories import split_passes

    rows = _budget_rows(1)
    length = {id(r): len(r["prompt_ids"]) + len(r["response_ids"]) for r in rows}
    for budget in (0, 20, 45, 10 ** 6):
        passes = split_passes(rows, budget)
        assert sorted(id(r) for p, _ in passes for r in p) == sorted(id(r) for r in rows)  # every row once
        for part, group in passes:
            pids = {r["prompt_id"] for r in part}
            if group is None:  # whole prompts only, within the budget
                k = {p: sum(r["prompt_id"] == p for r in rows) for p in pids}
                assert all(sum(r["prompt_id"] == p for r in part) == k[p] for p in pids)
                assert budget == 0 or len(pids) == 1 or len(part) * max(length[id(r)] for r in part) <= budget
            else:  # part of one prompt that alone exceeds the budget
                (pid,) = pids
                assert group == {pid: sum(r["prompt_id"] == pid for r in rows)}
    assert len(split_passes(rows, 10 ** 6)) == 1 and all(g is None for _, g in split_passes(rows, 10 ** 6))
    assert any(g is not None for _, g in split_passes(rows, 20))


@pytest.mark.parametrize("mode", ["raw", "exact", "projected"])
def test_split_prompt_equals_whole_prompt(model, coords, val, mode):
    from cropi.influence.trajectories import split_passes

    rows = _budget_rows(2)
    pid = max({r["prompt_id"] for r in rows} - set(ZERO_IDS), key=lambda p: sum(r["prompt_id"] == p for r in rows))
    mine = [r for r in rows if r["prompt_id"] == pid]
    assert len(mine) >= 3
    kw = dict(val_grads=val, proj_dim=64, seed=5)
    whole = gradients.prompt_scores(model, make_batch(mine, 0)[0], coords, mode, **kw)
    parts = split_passes(mine, 2 * max(len(r["prompt_ids"]) + len(r["response_ids"]) for r in mine) - 1)
    assert len(parts) >= 2 and all(g == {pid: len(mine)} for _, g in parts)  # split: no pass holds two longest rows
    split = gradients.split_prompt_scores(model, [make_batch(p, 0, g)[0] for p, g in parts], coords, mode, **kw)
    if mode == "raw":
        assert float(_rel(flatten(split["grads"], coords), flatten(whole["grads"], coords)).max()) < 1e-6
    elif mode == "exact":
        for s in val:
            assert abs(float(split["dots"][s][0] - whole["dots"][s][0])) <= 1e-6 * abs(float(whole["dots"][s][0]))
        assert abs(float(split["norms"][0] - whole["norms"][0])) <= 1e-6 * float(whole["norms"][0])
    else:
        assert float(_rel(split["projected"], whole["projected"]).max()) < 1e-5
    torch.testing.assert_close(split["kl"], whole["kl"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(split["objective"], whole["objective"], rtol=1e-5, atol=1e-7)
    assert split["num_tokens"].tolist() == whole["num_tokens"].tolist()


def test_gpt2_conv1d_weights_are_covered_and_equal_autograd():
    """GPT-2 keeps attention and MLP in Conv1D ([in, out] weights): they count, exactly."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from cropi.influence.params import coverage

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=259, n_embd=32, n_layer=2, n_head=2, n_positions=64)).eval()
    coords = sample_coordinates(gpt2, "linear", 0.3, seed=1)
    assert len(coords) == 2 * 4 + 1  # c_attn, attn.c_proj, c_fc, mlp.c_proj per block, and the tied lm_head
    cov = coverage(gpt2, coords)
    assert cov["fraction"] == 1.0 and cov["covered_matrix_params"] == sum(
        p.numel() for n, p in gpt2.named_parameters() if p.dim() == 2 and "wpe" not in n)
    b, _ = _with_behavior(gpt2, _rows(random.Random(4), 5), seed=3)
    fast = flatten(reference.prompt_gradients(gpt2, b, coords), coords)
    slow = flatten(reference.prompt_scores(gpt2, b, coords, "raw")["grads"], coords)  # .grad of every weight
    assert float(_rel(fast, slow).max()) < 1e-5 and float(slow.norm()) > 1e-4


def test_a_model_with_uncovered_matrix_weights_is_refused():
    from torch import nn

    class Router(nn.Module):  # a bare matrix parameter, as MoE routers and fused experts hold them
        def __init__(self):
            super().__init__()
            self.experts = nn.Parameter(torch.zeros(4, 8, 8))
            self.proj = nn.Linear(8, 8)

    with pytest.raises(CropiError, match=r"1 matrix weights are neither, e\.g\. \['experts'\]"):
        chosen_linears(Router(), "linear")
