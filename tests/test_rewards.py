import pytest

from cropi.data.rewards import exact_integer, extract_answer, load_reward_fn, math_answer, score
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
    assert load_reward_fn("cropi.data.rewards:exact_integer") is exact_integer
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
