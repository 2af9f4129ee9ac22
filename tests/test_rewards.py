import pytest

import json
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq

from cropi.data.dataset import load_prompts
from cropi.data.rewards import RewardFn, exact_integer, extract_answer, load_reward_fn, math_answer, score
from cropi.errors import CropiError


@pytest.mark.parametrize("resp, gt, want", [
    ("42", "42", 1.0), ("42<eos>", "42", 1.0), (" 42 and more 7", "42", 1.0),
    ("-3", "-3", 1.0), ("43", "42", 0.0), ("", "42", 0.0), ("forty-two", "42", 0.0), ("042", "42", 1.0),
])
def test_exact_integer(resp, gt, want):
    assert exact_integer(resp, gt) == want


@pytest.mark.parametrize("text, want", [
    ("so the answer is\n#### 1,234", "1,234"),
    (r"thus $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
    (r"\boxed{3} then \boxed{5}", "5"),
    ("we get 3 then 17.5", "17.5"),
    ("nothing here", None),
])
def test_extract_answer(text, want):
    assert extract_answer(text) == want


@pytest.mark.parametrize("resp, gt, want", [
    ("#### 1,234", "1234", 1.0),
    (r"\boxed{0.5}", r"\frac{1}{2}", 1.0),
    (r"\boxed{\frac{2}{4}}", "0.5", 1.0),
    ("#### 12", "#### 12", 1.0),
    ("#### 13", "12", 0.0),
    ("no answer", "12", 0.0),
])
def test_math_answer(resp, gt, want):
    assert math_answer(resp, gt) == want


def test_plugin_loading_and_errors():
    loaded = load_reward_fn("cropi.data.rewards:exact_integer")
    assert loaded.fn is exact_integer and not loaded.verl_style and loaded.check_ground_truth is not None
    with pytest.raises(CropiError, match="cannot import module 'no_such_mod'"):
        load_reward_fn("no_such_mod:f")
    with pytest.raises(CropiError, match="has no function 'nope'"):
        load_reward_fn("cropi.data.rewards:nope")
    with pytest.raises(CropiError, match="module:function"):
        load_reward_fn("cropi.data.rewards")
    with pytest.raises(CropiError, match=r"failed on train row 3: ZeroDivisionError"):
        score(lambda r, g: 1 / 0, "x", "y", "train row 3")
    with pytest.raises(CropiError, match=r"returned 'yes' on val row 0"):
        score(lambda r, g: "yes", "x", "y", "val row 0")
    with pytest.raises(CropiError, match=r"returned nan"):
        score(lambda r, g: float("nan"), "x", "y", "val row 0")
    assert score(lambda r, g: True, "x", "y", "r") == 1.0


# A reward module as verl users write them (verl/utils/reward_score style, GSM8K '####' answers),
# loaded unchanged from its file; it records what it was called with.
VERL_REWARD = textwrap.dedent("""
    import re

    CALLS = []

    def extract_solution(solution_str):
        m = re.search(r"#### (-?[0-9.,]+)", solution_str)
        return None if m is None else m.group(1).replace(",", "")

    def compute_score(data_source, solution_str, ground_truth, extra_info=None):
        CALLS.append((data_source, extra_info))
        answer = extract_solution(solution_str)
        return {"score": float(answer == ground_truth), "acc": answer == ground_truth, "pred": answer}

    def plain_float(data_source, solution_str, ground_truth, extra_info=None):
        return 1.0 if ground_truth in solution_str else 0.0

    def no_score_key(data_source, solution_str, ground_truth, extra_info=None):
        return {"acc": 1.0}
""")


def _verl_parquet(path):
    rows = [{"data_source": "openai/gsm8k",
             "prompt": [{"role": "system", "content": "Think step by step."},
                        {"role": "user", "content": f"What is {a} + {b}? Put the answer after ####."}],
             "ability": "math",
             "reward_model": {"style": "rule", "ground_truth": str(a + b)},
             "extra_info": {"split": "train", "index": i, "answer": f"{a} + {b} = {a + b}"}}
            for i, (a, b) in enumerate([(1200, 34), (5, 7), (10, 20)])]
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_verl_reward_module_and_parquet_unchanged(tmp_path):
    mod = tmp_path / "gsm8k_reward.py"
    mod.write_text(VERL_REWARD)
    _verl_parquet(tmp_path / "train.parquet")
    rows = load_prompts(tmp_path / "train.parquet")
    assert [m["role"] for m in rows[0].messages] == ["system", "user"] and rows[0].ground_truth == "1234"
    fn = load_reward_fn(f"{mod}:compute_score")
    assert isinstance(fn, RewardFn) and fn.verl_style
    responses = ["1200 + 34 = 1234\n#### 1,234", "#### 13", "the answer is 30"]
    got = [score(fn, resp, r.ground_truth, f"row {r.prompt_id}", r.data_source, r.extra_info)
           for resp, r in zip(responses, rows)]
    assert got == [1.0, 0.0, 0.0]
    calls = fn.fn.__globals__["CALLS"]
    assert [c[0] for c in calls] == ["openai/gsm8k"] * 3
    assert [c[1]["index"] for c in calls] == [0, 1, 2] and calls[0][1]["split"] == "train"
    assert score(load_reward_fn(f"{mod}:plain_float"), "so 12", "12", "r", "ds") == 1.0
    with pytest.raises(CropiError, match=r"'no_score_key' failed on row 7: TypeError: returned a dict without a 'score' key"):
        score(load_reward_fn(f"{mod}:no_score_key"), "x", "1", "row 7")


def test_reward_range_and_file_errors(tmp_path):
    mod = tmp_path / "r.py"
    mod.write_text("def two(response, ground_truth):\n    return 2.0\n")
    with pytest.raises(CropiError, match=r"'two' returned 2.0 on train prompt 5; expected a finite number in \[0, 1\]"):
        score(load_reward_fn(f"{mod}:two"), "x", "1", "train prompt 5")
    assert score(load_reward_fn(f"{mod}:two", reward_range=(-1, 2)), "x", "1", "r") == 2.0
    with pytest.raises(CropiError, match=r"returned -3.0"):
        score(load_reward_fn(f"{mod}:two", reward_range=(-1, 2)).__class__(lambda r, g: -3.0, "neg", False, -1, 2),
              "x", "1", "r")
    with pytest.raises(CropiError, match=r"file .*missing.py does not exist"):
        load_reward_fn(f"{tmp_path}/missing.py:f")
    (tmp_path / "broken.py").write_text("def f(:\n")
    with pytest.raises(CropiError, match=r"importing .*broken.py failed: SyntaxError"):
        load_reward_fn(f"{tmp_path}/broken.py:f")


@pytest.mark.parametrize("rr", [[1.0, 0.0], [0.0], "0,1", [0.0, float("inf")], [True, 2]])
def test_reward_range_config_checked(rr):
    from cropi.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="data.reward_range"):
        load_config(None, [f"data.reward_range={json.dumps(rr) if not isinstance(rr, str) else rr}"])
