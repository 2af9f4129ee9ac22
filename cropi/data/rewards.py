"""Verifiable reward functions: f(response: str, ground_truth: str) -> float in [0, 1].

- `exact_integer`: the first integer in the response equals the ground truth.
- `math_answer`: GSM8K/MATH style; the answer after '####' or inside the last \\boxed{},
  else the last number, checked with math-verify (symbolic equivalence) when it parses,
  else by normalised string equality.
Users plug their own by import path: `data.reward_fn: mypkg.rewards:my_fn`.
"""

from __future__ import annotations

import importlib
import math
import re
from typing import Callable

from cropi.errors import CropiError

_INT = re.compile(r"-?\d+")
_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def exact_integer(response: str, ground_truth: str) -> float:
    m = _INT.search(response)
    if m is None:
        return 0.0
    try:
        return float(int(m.group()) == int(str(ground_truth).strip()))
    except ValueError:
        return 0.0


def _integer_truth(ground_truth: str) -> None:
    int(str(ground_truth).strip())


# a reward function may carry `check_ground_truth(gt)`, raising ValueError on a ground truth it can
# never match; load_data calls it on every row, so a bad row fails at once, not as reward 0 forever
exact_integer.check_ground_truth = _integer_truth


def check_ground_truths(fn: Callable, rows, where: str) -> None:
    """Every row's ground truth through the reward function's own check, if it has one."""
    check = getattr(fn, "check_ground_truth", None)
    if check is None:
        return
    for r in rows:
        try:
            check(r.ground_truth)
        except (ValueError, TypeError) as e:
            raise CropiError(f"{where} prompt {r.prompt_id}: ground truth {r.ground_truth!r} cannot be checked by "
                             f"reward function {getattr(fn, '__name__', fn)!r} ({e})") from None


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth, out = start + len("\\boxed{"), 1, []
    while i < len(text):
        ch = text[i]
        depth += ch == "{"
        depth -= ch == "}"
        if depth == 0:
            return "".join(out).strip()
        out.append(ch)
        i += 1
    return None


def extract_answer(text: str) -> str | None:
    """'#### 42' -> '42'; '\\boxed{\\frac12}' -> '\\frac12'; else the last number."""
    if "####" in text:
        return text.rsplit("####", 1)[1].strip().split("\n")[0].strip()
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    nums = _NUM.findall(text)
    return nums[-1] if nums else None


def _normalise(s: str) -> str:
    s = s.strip().strip("$").replace(",", "").replace(" ", "")
    try:
        x = float(s)
        return str(int(x)) if x == int(x) else repr(x)
    except ValueError:
        return s


def math_answer(response: str, ground_truth: str) -> float:
    pred = extract_answer(response)
    if pred is None:
        return 0.0
    gt = str(ground_truth)
    # A ground truth is the answer itself unless it carries its own marker ('#### 12', '\\boxed{12}').
    gold = extract_answer(gt) if ("####" in gt or "\\boxed{" in gt) else gt.strip()
    if _normalise(pred) == _normalise(gold):
        return 1.0
    try:
        from math_verify import parse, verify

        return float(bool(verify(parse(f"${gold}$"), parse(f"${pred}$"))))
    except Exception:  # math-verify missing or unable to parse either side: string check stands
        return 0.0


def load_reward_fn(spec: str) -> Callable[[str, str], float]:
    """Import 'module:function' and check it answers (str, str) -> number."""
    if ":" not in spec:
        raise CropiError(f"data.reward_fn {spec!r}: expected 'module:function'")
    mod_name, fn_name = spec.split(":", 1)
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise CropiError(f"data.reward_fn {spec!r}: cannot import module {mod_name!r} ({e})") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise CropiError(f"data.reward_fn {spec!r}: module {mod_name!r} has no function {fn_name!r}")
    return fn


def score(fn: Callable, response: str, ground_truth: str, where: str) -> float:
    """Call a reward function, turning its failures and non-numbers into errors that name the row."""
    try:
        r = fn(response, ground_truth)
    except Exception as e:
        raise CropiError(f"reward function {getattr(fn, '__name__', fn)!r} failed on {where}: "
                         f"{type(e).__name__}: {e}") from e
    if isinstance(r, bool):
        r = float(r)
    if not isinstance(r, (int, float)) or not math.isfinite(r) or not 0.0 <= r <= 1.0:
        raise CropiError(f"reward function {getattr(fn, '__name__', fn)!r} returned {r!r} on {where}; "
                         "expected a number in [0, 1]")
    return float(r)
