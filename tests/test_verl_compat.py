"""A verl, OpenRLHF or TRL user's recipe, unchanged: prompt tokenization, prompt length policies,
their reward functions and scorers, their dataset keys, and the training knobs they tune, each
against a slow reference or hand arithmetic."""

import json
import math

import pytest
import torch

from cropi.config import load_config
from cropi.data.dataset import PromptRow
from cropi.errors import CropiError, DataError


# ---- prompts ----------------------------------------------------------------------------------

def _word_tokenizer(template: str):
    """A tokenizer whose ids are known by hand: <bos>=0 <eos>=1 <pad>=2 <|user|>=3 12+3==4
    <|assistant|>=5, and a post-processor that adds BOS, as Llama-3's does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<bos>": 0, "<eos>": 1, "<pad>": 2, "<|user|>": 3, "12+3=": 4, "<|assistant|>": 5, "<unk>": 6}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    tok = PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                  unk_token="<unk>")
    tok.chat_template = template
    return tok


BOS_TEMPLATE = ("{{ bos_token }}{% for m in messages %} <|user|> {{ m['content'] }}{% endfor %}"
                "{% if add_generation_prompt %} <|assistant|>{% endif %}")


def test_a_template_that_adds_bos_gives_one_bos():
    from cropi.data.prompts import PromptEncoder

    tok = _word_tokenizer(BOS_TEMPLATE)
    msgs = [{"role": "user", "content": "12+3="}]
    assert PromptEncoder(tok).encode(msgs) == [0, 3, 4, 5]
    # what rendering then tokenizing with special tokens did: two BOS
    assert tok(PromptEncoder(tok).text(msgs))["input_ids"] == [0, 0, 3, 4, 5]


def test_chat_template_kwargs_reach_the_template():
    from cropi.data.prompts import PromptEncoder

    tok = _word_tokenizer("{{ bos_token }}{% for m in messages %} <|user|> {{ m['content'] }}{% endfor %}"
                          "{% if enable_thinking %} <|assistant|>{% endif %}")
    msgs = [{"role": "user", "content": "12+3="}]
    assert PromptEncoder(tok, {"enable_thinking": True}).encode(msgs) == [0, 3, 4, 5]
    assert PromptEncoder(tok, {"enable_thinking": False}).encode(msgs) == [0, 3, 4]


def test_overlong_prompt_policies():
    from cropi.data.prompts import PromptEncoder

    tok = _word_tokenizer(BOS_TEMPLATE)
    short = PromptRow(0, "x", [{"role": "user", "content": "12+3="}], "15")
    long = PromptRow(1, "x", [{"role": "user", "content": "12+3= 12+3= 12+3="}], "15")  # 6 tokens
    with pytest.raises(DataError, match=r"f\.parquet row 1: the prompt is 6 tokens, over rollout\.max_prompt_length 5"):
        PromptEncoder(tok, max_len=5, policy="error").apply([short, long], "f.parquet")
    kept, counts = PromptEncoder(tok, max_len=5, policy="filter").apply([short, long], "f")
    assert kept == [short] and counts["filtered"] == 1 and counts["overlong"] == 1
    enc = PromptEncoder(tok, max_len=5, policy="truncate_left")
    kept, counts = enc.apply([short, long], "f")
    assert kept == [short, long] and counts["truncated"] == 1
    assert enc.encode(long.messages) == [3, 4, 4, 4, 5]  # its last 5 of [0, 3, 4, 4, 4, 5]
    with pytest.raises(Exception, match=r"rollout\.max_prompt_length"):
        load_config("configs/tiny-cpu.yaml", ["rollout.max_prompt_length=125"])  # + max_new_tokens 8 > 128


def test_tiny_model_prompts_are_unchanged(tiny_model):
    """The tiny tokenizer has no chat template: its own BOS is added, as before."""
    from cropi.data.prompts import PromptEncoder
    from cropi.model.loading import load_tokenizer

    tok = load_tokenizer(tiny_model)
    assert PromptEncoder(tok).encode([{"role": "user", "content": "12+3="}]) == tok("12+3=")["input_ids"]
    assert tok("12+3=")["input_ids"][0] == tok.bos_token_id


# ---- rewards ----------------------------------------------------------------------------------

GSM8K = [("...8*9=72.\n#### 72", "72", "strict", 1.0), ("The answer is 72", "72", "strict", 0.0),
         ("#### 3\n#### 72", "72", "strict", 1.0), ("I think 70, no wait it is 72 apples", "72", "flexible", 1.0),
         ("#### 1,234", "1234", "strict", 1.0), ("Total: 1,234 dollars", "1234", "flexible", 0.0),
         ("#### $72", "72", "strict", 0.0), ("Cost is $72", "72", "flexible", 1.0), ("#### -5", "-5", "strict", 1.0),
         ("the result is -5.", "-5", "flexible", 0.0), ("#### 72.", "72", "strict", 0.0),
         ("#### 72" + "x" * 300, "72", "strict", 0.0)]
MATH = [("So the answer is $\\boxed{\\dfrac{1}{2}}$.", "\\frac{1}{2}", 1.0), ("\\boxed{0.5}", "\\frac{1}{2}", 1.0),
        ("\\boxed{1/2}", "\\frac{1}{2}", 1.0), ("First \\boxed{3} then \\boxed{4}", "4", 1.0),
        ("\\boxed{\\left( 3, \\frac12 \\right)}", "(3,\\frac{1}{2})", 1.0), ("\\boxed{10\\text{ inches}}", "10", 1.0),
        ("\\boxed{x = 5}", "5", 1.0), ("\\boxed{90^\\circ}", "90", 1.0), ("\\boxed{50\\%}", "50", 1.0),
        ("\\boxed{\\$18.90}", "18.90", 1.0), ("The answer is $\\boxed 5$.", "5", 1.0), ("\\fbox{5}", "5", 0.0),
        ("\\boxed{1,000}", "1000", 0.0), ("\\boxed{\\frac{2}{4}}", "\\frac{1}{2}", 0.0), ("\\boxed{5", "5", 0.0),
        ("answer 5", "5", 0.0)]
DAPO = [("... so we get 34.\nAnswer: 34", "34", False, 1.0, "34"), ("Answer: $\\boxed{34}$", "34", False, 1.0, "34"),
        ("answer : 1,000 dollars", "1000", False, 1.0, "1000"),
        ("The final answer is \\boxed{34}", "34", False, -1.0, "[INVALID]"),
        ("Answer: 12\nWait...\nAnswer: 13", "12", False, -1.0, "13"),
        ("Answer: x = \\frac12", "\\frac{1}{2}", False, 1.0, None), ("Answer: 34.", "34", False, -1.0, "34."),
        ("Answer: 0.5", "\\frac{1}{2}", False, -1.0, None), ("Answer: 34\n" + "x" * 300, "34", False, -1.0, "[INVALID]"),
        ("... \\boxed{34}", "34", True, 1.0, "34"), ("... \\boxed{ 34}", "34", True, -1.0, " 34"),
        ("Answer: 34", "34", True, -1.0, None)]


@pytest.mark.parametrize("sol,gt,method,want", GSM8K)
def test_gsm8k_scorer_as_verl(sol, gt, method, want):
    from cropi.data.scorers import gsm8k_score

    assert gsm8k_score(sol, gt, method) == want


@pytest.mark.parametrize("sol,gt,want", MATH)
def test_math_scorer_as_verl(sol, gt, want):
    from cropi.data.scorers import math_score

    assert math_score(sol, gt) == want


@pytest.mark.parametrize("sol,gt,strict,want,pred", DAPO)
def test_dapo_scorer_as_verl(sol, gt, strict, want, pred):
    from cropi.data.scorers import dapo_score

    out = dapo_score(sol, gt, strict_box_verify=strict)
    assert out["score"] == want and out["acc"] == (want == 1.0)
    if pred is not None:
        assert out["pred"] == pred


def test_dispatch_by_data_source_and_the_dict_score_in_every_style():
    from cropi.data.rewards import load_reward_fn, score

    fn = load_reward_fn("cropi.data.scorers:default_compute_score", (-1.0, 1.0))
    assert fn.style == "verl"
    assert score(fn, "#### 7", "7", "row", "openai/gsm8k") == 1.0
    assert score(fn, "\\boxed{7}", "7", "row", "lighteval/MATH") == 1.0
    assert score(fn, "Answer: 8", "7", "row", "aime2024") == -1.0  # DAPO's {'score': -1, ...}, unwrapped
    with pytest.raises(CropiError, match=r"data_source 'my/set' has no built-in scorer"):
        score(fn, "7", "7", "row", "my/set")


def _reward_file(tmp_path, body: str) -> str:
    p = tmp_path / "rw.py"
    p.write_text(body)
    return str(p)


def test_trl_style_functions_are_called_once_per_batch_with_the_columns(tmp_path):
    from cropi.data.rewards import load_reward_fn, score_batch

    spec = _reward_file(tmp_path, '''
CALLS = []
def accuracy(prompts, completions, solution, **kwargs):
    CALLS.append((len(prompts), sorted(kwargs)))
    return [1.0 if c[0]["content"].strip() == s else 0.0 for c, s in zip(completions, solution)]
def dict_style(response, ground_truth):
    return {"score": float(response == ground_truth), "acc": response == ground_truth}
''')
    fn = load_reward_fn(spec + ":accuracy")
    rows = [PromptRow(i, "arith", [{"role": "user", "content": f"{i}+0="}], str(i), {"family": "add"}) for i in range(3)]
    rewards, comps = score_batch(fn, ["0", "5", "2"], rows, "batch")
    assert fn.style == "trl" and rewards == [1.0, 0.0, 1.0] and comps is None
    mod = __import__("sys").modules[fn.fn.__module__]
    assert mod.CALLS == [(3, ["answer", "data_source", "extra_info", "family", "ground_truth"])]  # one call
    plain = load_reward_fn(spec + ":dict_style")
    assert score_batch(plain, ["1", "2"], rows[:2], "b")[0] == [0.0, 0.0] and plain("1", "1") == 1.0


def test_weighted_reward_functions_sum_like_trl_and_log_each(tmp_path):
    from cropi.data.rewards import load_reward, score_batch

    spec = _reward_file(tmp_path, '''
def right(response, ground_truth):
    return float(response == ground_truth)
def short(prompts, completions, **kw):
    return [None if c[0]["content"] == "skip" else (1.0 if len(c[0]["content"]) < 3 else 0.0) for c in completions]
''')
    cfg = load_config("configs/tiny-cpu.yaml", [f"data.reward_fns=[{spec}:right, {spec}:short]",
                                                "data.reward_weights=[0.75, 0.25]"])
    fn = load_reward(cfg.data)
    rows = [PromptRow(i, "a", [{"role": "user", "content": "q"}], "12") for i in range(3)]
    rewards, comps = score_batch(fn, ["12", "1234", "skip"], rows, "b")
    assert rewards == [0.75 + 0.25, 0.0 + 0.0, 0.0]  # a None (NaN) is left out of its sum
    assert comps["right"] == [1.0, 0.0, 0.0] and comps["short"][:2] == [1.0, 0.0] and math.isnan(comps["short"][2])
    with pytest.raises(Exception, match=r"data\.reward_weights: needs one weight per data\.reward_fns entry"):
        load_config("configs/tiny-cpu.yaml", [f"data.reward_fns=[{spec}:right]", "data.reward_weights=[1, 2]"])


# ---- data -------------------------------------------------------------------------------------

def test_openrlhf_keys_default_data_source_and_lists_of_files(tmp_path):
    from cropi.data.suite import load_pool

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join(json.dumps({"input": f"{i}+1=", "label": str(i + 1)}) for i in range(3)) + "\n")
    b.write_text(json.dumps({"input": [{"role": "user", "content": "9+1="}], "label": "10", "datasource": "mine"}) + "\n")
    rows = load_pool([a, b], "input", "label", "openai/gsm8k")
    assert [r.prompt_id for r in rows] == [0, 1, 2, 3] and [r.ground_truth for r in rows] == ["1", "2", "3", "10"]
    assert [r.data_source for r in rows] == ["openai/gsm8k"] * 3 + ["mine"]
    with pytest.raises(DataError, match=r"a\.jsonl row 0: field 'data_source' .*data\.default_data_source"):
        load_pool([a], "input", "label")
    with pytest.raises(DataError, match=r"field 'answer' \(data\.label_key\)"):
        load_pool([a], "input", "answer", "x")
    cfg = load_config("configs/tiny-cpu.yaml", ["data.synthetic=false", f"data.train_path=[{a}, {b}]",
                                                f"data.val_paths={{v: {b}}}", "data.input_key=input",
                                                "data.label_key=label", "data.default_data_source=openai/gsm8k"])
    assert cfg.data.train_path == [str(a), str(b)]
    with pytest.raises(Exception, match=r"data\.train_path: expected str or list"):
        load_config("configs/tiny-cpu.yaml", ["data.train_path=3"])


# ---- training knobs ---------------------------------------------------------------------------

def test_warmup_and_cosine_schedule_at_every_step():
    from cropi.algo.schedule import lr_at

    base, total, warm = 1e-3, 20, 5
    for step in range(1, total + 1):
        if step <= warm:
            want = base * step / warm
        else:
            want = 0.1 * base + 0.9 * base * 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))
        assert lr_at(step, base, total, warm, "cosine", 0.1) == pytest.approx(want, rel=1e-12)
    assert lr_at(20, base, total, warm, "cosine", 0.1) == pytest.approx(0.1 * base)
    assert [lr_at(s, base, total, 3, "constant") for s in (1, 2, 3, 4, 20)] == [base / 3, 2 * base / 3, base, base, base]


def test_k3_clamp_and_verl_spellings():
    from cropi.algo.grpo import aggregate, normaliser, token_loss

    logp = torch.tensor([[-1.0, -2.0, -30.0, 0.0]])
    ref = torch.tensor([[-2.0, -1.0, 0.0, -30.0]])
    _, _, k3 = token_loss(logp, logp, ref, torch.tensor([0.0]), 0.2, 0.2, 0.001, kl_clamp=10.0)
    # e^-1 - (-1) - 1 = 0.3679; e^1 - 1 - 1 = 0.7183; e^30 clamped to 10; d = -30 -> -20: e^-20 + 19 -> 10
    assert k3[0].tolist() == pytest.approx([math.exp(-1), math.e - 2, 10.0, 10.0], abs=1e-4)
    _, _, raw = token_loss(logp, logp, ref, torch.tensor([0.0]), 0.2, 0.2, 0.001, kl_clamp=0.0)
    assert raw[0, 2] > 1e12
    loss = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    # verl's worked example: token-mean 2.5, seq-mean-token-sum 5.0, seq-mean-token-mean 3.0
    for mode, want in (("token-mean", 2.5), ("seq-mean-token-sum", 5.0), ("seq-mean-token-mean", 3.0)):
        assert float(aggregate(loss, mask, mode, normaliser(mask, mode), 1)) == pytest.approx(want)
    assert load_config("configs/tiny-cpu.yaml", ["trainer.loss_agg=seq-mean-token-sum-norm"]).trainer.loss_agg


def _tiny_step_inputs(tiny_model, n=4):
    from cropi.model.loading import load_model, load_tokenizer

    tok = load_tokenizer(tiny_model)
    p = tok("12+3=")["input_ids"]
    shard = {"prompt_ids": [p] * n, "response_ids": [[5, 6, 7], [8, 9], [5, 9, 9, 7], [6]][:n],
             "advantages": [1.0, -1.0, 0.5, -0.5][:n], "pad_id": tok.pad_token_id}
    return shard, load_model(str(tiny_model), "float32", "cpu"), load_model(str(tiny_model), "float32", "cpu").eval()


def _manual_steps(model, ref, shard, tcfg, batches, old):
    """Hand-run optimizer steps: each batch (indices, normaliser) one AdamW step on the PPO loss
    against the fixed behaviour log-probs `old`."""
    from cropi.algo.grpo import aggregate, token_loss
    from cropi.model.sequences import collate, response_logprobs

    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, eps=tcfg.adam_eps, weight_decay=tcfg.weight_decay)
    for idx, norm in batches:
        ids, attn, target = collate([shard["prompt_ids"][i] for i in idx], [shard["response_ids"][i] for i in idx],
                                    shard["pad_id"])
        with torch.no_grad():
            ref_lp = response_logprobs(ref, ids, attn, target)
        logp = response_logprobs(model, ids, attn, target)
        adv = torch.tensor([shard["advantages"][i] for i in idx])
        loss_tok, _, _ = token_loss(logp, old[tuple(idx)], ref_lp, adv, tcfg.eps_low, tcfg.eps_high, tcfg.kl_coef,
                                    tcfg.kl_clamp)
        aggregate(loss_tok, target, tcfg.loss_agg, norm, 1).backward()
        opt.step()
        opt.zero_grad()
    return model


def test_two_ppo_epochs_and_two_mini_batches_equal_hand_run_steps(tiny_model):
    from cropi.model.sequences import collate, response_logprobs
    from cropi.trainer.step import Accumulator, grpo_step

    cfg = load_config("configs/tiny-cpu.yaml", ["trainer.lr=0.01", "trainer.kl_coef=0.1"])
    t = cfg.trainer
    shard, model, ref = _tiny_step_inputs(tiny_model)

    def old_of(m, idx):
        ids, attn, target = collate([shard["prompt_ids"][i] for i in idx], [shard["response_ids"][i] for i in idx],
                                    shard["pad_id"])
        with torch.no_grad():
            return response_logprobs(m, ids, attn, target)

    ntok = lambda idx: float(sum(len(shard["response_ids"][i]) for i in idx))  # token-mean normaliser
    # two epochs over one mini-batch: the second step's ratio is taken against the first weights' log-probs
    _, hand, _ = _tiny_step_inputs(tiny_model)
    old = {(0, 1, 2, 3): old_of(hand, [0, 1, 2, 3])}
    _manual_steps(hand, ref, shard, t, [([0, 1, 2, 3], ntok([0, 1, 2, 3]))] * 2, old)
    t.ppo_epochs = 2
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, eps=t.adam_eps, weight_decay=t.weight_decay)
    out = grpo_step(Accumulator.plain(model, opt), ref, {**shard, "micro_batches": [[0, 1, 2, 3]]}, t,
                    ntok([0, 1, 2, 3]), 1, "cpu")
    assert out["optimizer_steps"] == 2
    for a, b in zip(model.parameters(), hand.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-6)
    # two mini-batches in one epoch: two steps, each on its half with its own normaliser
    t.ppo_epochs = 1
    _, model2, _ = _tiny_step_inputs(tiny_model)
    _, hand2, _ = _tiny_step_inputs(tiny_model)
    old = {(0, 2): old_of(hand2, [0, 2]), (1, 3): old_of(hand2, [1, 3])}
    _manual_steps(hand2, ref, shard, t, [([0, 2], ntok([0, 2])), ([1, 3], ntok([1, 3]))], old)
    opt = torch.optim.AdamW(model2.parameters(), lr=t.lr, eps=t.adam_eps, weight_decay=t.weight_decay)
    minis = [{"micro": [[0, 2]], "norm": ntok([0, 2])}, {"micro": [[1, 3]], "norm": ntok([1, 3])}]
    out = grpo_step(Accumulator.plain(model2, opt), ref, {**shard, "mini_batches": minis}, t, 0.0, 1, "cpu")
    assert out["optimizer_steps"] == 2
    for a, b in zip(model2.parameters(), hand2.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-6)


def test_mini_batch_plan_keeps_prompt_groups_and_equals_one_batch_by_default(tiny_model):
    from cropi.trainer.phase import rank_shards

    cfg = load_config("configs/tiny-cpu.yaml", ["trainer.group_size=2", "trainer.prompts_per_step=4",
                                                "trainer.world_size=2"])
    prompts = [[1, 2]] * 8
    responses = [[3] * (1 + i % 3) for i in range(8)]
    mask = torch.arange(3)[None, :] < torch.tensor([len(r) for r in responses])[:, None]
    one = rank_shards(cfg, prompts, responses, list(range(8)), list(range(8)), [[0.0] * len(r) for r in responses],
                      mask, 0)
    assert [len(s["mini_batches"]) for s in one] == [1, 1]
    assert [s["advantages"] for s in one] == [[0, 2, 4, 6], [1, 3, 5, 7]]  # sequences i::W, as before
    assert one[0]["mini_batches"][0]["norm"] == float(mask.sum())
    cfg.trainer.mini_batches = 2
    two = rank_shards(cfg, prompts, responses, list(range(8)), list(range(8)), [[0.0] * len(r) for r in responses],
                      mask, 0)
    seqs = [[two[r]["advantages"][i] for i in [x for mb in two[r]["mini_batches"][j]["micro"] for x in mb]]
            for j in range(2) for r in range(2)]
    # mini-batch 0 holds prompts 0 and 2 (sequences 0, 1, 4, 5), mini-batch 1 prompts 1 and 3
    assert sorted(seqs[0] + seqs[1]) == [0, 1, 4, 5] and sorted(seqs[2] + seqs[3]) == [2, 3, 6, 7]
    assert two[0]["mini_batches"][0]["norm"] == float(mask[[0, 1, 4, 5]].sum())


def test_trackers_get_verl_names_unprefixed():
    from cropi.trackers import step_scalars

    m = {"phase": 0, "step": 3, "reward_mean": 0.5, "critic/score/mean": 0.5, "response_length/clip_ratio": 0.25,
         "val-core/add/reward/mean@4": 0.4, "val_pass@1/add": 0.4, "reward/right/mean": 0.7}
    got = step_scalars(m)
    assert got["critic/score/mean"] == 0.5 and got["response_length/clip_ratio"] == 0.25
    assert got["val-core/add/reward/mean@4"] == 0.4 and got["reward/right/mean"] == 0.7
    assert got["train/reward_mean"] == 0.5 and got["val/pass@1/add"] == 0.4
