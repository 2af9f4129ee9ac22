"""Verifiable reward functions, in either of two styles, detected by signature:

- cropi's: `f(response: str, ground_truth: str) -> float`;
- verl's: `compute_score(data_source, solution_str, ground_truth, extra_info=None)` returning a
  float or a dict with a `score` key; `data_source` and `extra_info` come from the dataset row.

A reward must be finite and in `data.reward_range` (default [0, 1]); anything else is refused
with the row named. Built in:
- `exact_integer`: the first integer in the response equals the ground truth.
- `math_answer`: GSM8K/MATH style; the answer after '####' or inside the last \\boxed{},
  else the last number, checked with math-verify (symbolic equivalence) when it parses,
  else by normalised string equality.
Users plug their own by an explicit import path, `data.reward_fn: mypkg.rewards:my_fn`, or by a
Python file, `data.reward_fn: /abs/path/reward.py:compute_score` (verl's custom_reward_function).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
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
                             f"reward function {getattr(fn, 'name', getattr(fn, '__name__', fn))!r} ({e})") from None


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


@dataclass(frozen=True)
class RewardFn:
    """A loaded reward function, how it is called, and the range its values must lie in."""

    fn: Callable
    name: str
    verl_style: bool = False
    low: float = 0.0
    high: float = 1.0

    @property
    def check_ground_truth(self):
        return getattr(self.fn, "check_ground_truth", None)

    def __call__(self, response: str, ground_truth: str, data_source: str = "", extra_info: dict | None = None):
        if self.verl_style:
            out = self.fn(data_source=data_source, solution_str=response, ground_truth=ground_truth,
                          extra_info=dict(extra_info or {}))
            if isinstance(out, dict):
                if "score" not in out:
                    raise TypeError(f"returned a dict without a 'score' key (keys: {sorted(out)})")
                out = out["score"]
            return out
        return self.fn(response, ground_truth)


def _is_verl_style(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: call it the plain way
        return False
    return "data_source" in params and "solution_str" in params


def _import_file(path: Path, spec: str):
    if not path.is_file():
        raise CropiError(f"data.reward_fn {spec!r}: file {path} does not exist")
    name = "cropi_reward_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    mspec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(mspec)
    try:
        mspec.loader.exec_module(mod)
    except Exception as e:
        raise CropiError(f"data.reward_fn {spec!r}: importing {path} failed: {type(e).__name__}: {e}") from None
    sys.modules[name] = mod
    return mod


def load_reward_fn(spec: str, reward_range=(0.0, 1.0)) -> RewardFn:
    """Import 'module:function' or 'file.py:function'; its style (cropi's or verl's) by signature."""
    if ":" not in spec:
        raise CropiError(f"data.reward_fn {spec!r}: expected 'module:function' or 'path/to/file.py:function'")
    mod_name, fn_name = spec.rsplit(":", 1)
    if mod_name.endswith(".py"):
        mod = _import_file(Path(mod_name), spec)
    else:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            raise CropiError(f"data.reward_fn {spec!r}: cannot import module {mod_name!r} ({e})") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise CropiError(f"data.reward_fn {spec!r}: module {mod_name!r} has no function {fn_name!r}")
    low, high = (float(x) for x in reward_range)
    return RewardFn(fn, getattr(fn, "__name__", fn_name), _is_verl_style(fn), low, high)


def load_reward(data_cfg) -> RewardFn:
    """The run's reward function: `data.reward_fn` checked against `data.reward_range`."""
    return load_reward_fn(data_cfg.reward_fn, data_cfg.reward_range)


def score(fn: Callable, response: str, ground_truth: str, where: str, data_source: str = "",
          extra_info: dict | None = None) -> float:
    """Call a reward function, turning its failures, non-numbers and out-of-range values into errors
    that name the row. `fn` is a RewardFn (its range) or a plain f(response, ground_truth) ([0, 1])."""
    if not isinstance(fn, RewardFn):
        fn = RewardFn(fn, getattr(fn, "__name__", repr(fn)))
    try:
        r = fn(response, ground_truth, data_source, extra_info)
    except Exception as e:
        raise CropiError(f"reward function {fn.name!r} failed on {where}: {type(e).__name__}: {e}") from e
    if isinstance(r, bool):
        r = float(r)
    if hasattr(r, "item") and getattr(r, "ndim", 1) == 0:  # a 0-d numpy / torch number
        r = r.item()
    if not isinstance(r, (int, float)) or not math.isfinite(r) or not fn.low <= r <= fn.high:
        raise CropiError(f"reward function {fn.name!r} returned {r!r} on {where}; expected a finite number "
                         f"in [{fn.low:g}, {fn.high:g}] (data.reward_range)")
    return float(r)
