"""Verifiable reward functions, in any of three styles, detected by signature:

- cropi's: `f(response: str, ground_truth: str) -> float`;
- verl's: `compute_score(data_source, solution_str, ground_truth, extra_info=None)`;
  `data_source` and `extra_info` come from the dataset row;
- TRL's: `f(prompts, completions, **columns) -> list[float | None]` (detected by a `completions`
  parameter), called once per batch of responses with conversational completions and the row's
  columns (ground_truth, solution, answer, data_source, extra_info and its keys) as lists.
In every style a dict with a `score` key stands for its score (verl's DAPO scorer returns one).
Several functions with weights (`data.reward_fns`, `data.reward_weights`) are summed as TRL does,
a None left out; each one's mean is logged per step (`reward/<name>/mean`). verl's rule-based
scorers and its dispatch by data_source are in cropi.data.scorers.

A reward must be finite and in `data.reward_range` (default [0, 1]); anything else is refused
with the row named. Built in:
- `exact_integer`: the first integer in the response equals the ground truth.
- `math_answer`: GSM8K/MATH style; the answer after '####' or inside the last \\boxed{},
  else the last number, checked with math-verify (symbolic equivalence) when it parses,
  else by normalised string equality.
Users plug their own by an explicit import path, `data.reward_fn: mypkg.rewards:my_fn`, or by a
Python file, `data.reward_fn: /abs/path/reward.py:compute_score` (verl's custom_reward_function).

Over 300 lines: the whole reward contract (built-in scorers, plain / batched TRL / weighted
functions, loading and the checks with the row they name) is read in one place.
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
from cropi.data.dataset import PromptRow

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
    """A loaded reward function, how it is called (style, by signature), and the range its values
    must lie in."""

    fn: Callable
    name: str
    style: str = "cropi"  # cropi | verl | trl
    low: float = 0.0
    high: float = 1.0

    @property
    def verl_style(self) -> bool:
        return self.style == "verl"

    @property
    def check_ground_truth(self):
        return getattr(self.fn, "check_ground_truth", None)

    def __call__(self, response: str, ground_truth: str, data_source: str = "", extra_info: dict | None = None):
        """One response's reward (a dict's 'score' in every style)."""
        if self.style == "trl":
            from cropi.data.dataset import PromptRow

            return self.batch([response], [PromptRow(-1, data_source, [], str(ground_truth), dict(extra_info or {}))])[0]
        if self.style == "verl":
            out = self.fn(data_source=data_source, solution_str=response, ground_truth=ground_truth,
                          extra_info=dict(extra_info or {}))
        else:
            out = self.fn(response, ground_truth)
        return unwrap(out)

    def batch(self, responses: list[str], rows: list) -> list:
        """Rewards of responses[i] to rows[i] (PromptRows); a TRL-style function is called once."""
        if self.style != "trl":
            return [self(r, row.ground_truth, row.data_source, row.extra_info) for r, row in zip(responses, rows)]
        out = self.fn(**_trl_arguments(self.fn, responses, rows))
        if not isinstance(out, (list, tuple)) or len(out) != len(responses):
            raise TypeError(f"a TRL-style reward function must return a list of {len(responses)} rewards, got "
                            f"{type(out).__name__}" + (f" of {len(out)}" if isinstance(out, (list, tuple)) else ""))
        return [float("nan") if x is None else unwrap(x) for x in out]


def unwrap(out):
    """verl's DAPO scorer and others return {'score': ..., ...}: the score."""
    if isinstance(out, dict):
        if "score" not in out:
            raise TypeError(f"returned a dict without a 'score' key (keys: {sorted(out)})")
        return out["score"]
    return out


def _trl_arguments(fn: Callable, responses: list[str], rows: list) -> dict:
    """TRL's calling convention: prompts and completions (conversational: lists of messages), and
    every other dataset column as a per-row list (here: ground_truth and its usual aliases solution
    and answer, data_source, extra_info and each of its keys). Only what fn accepts, unless it takes
    **kwargs."""
    cols = {"prompts": [row.messages for row in rows],
            "completions": [[{"role": "assistant", "content": r}] for r in responses],
            "ground_truth": [row.ground_truth for row in rows], "solution": [row.ground_truth for row in rows],
            "answer": [row.ground_truth for row in rows], "data_source": [row.data_source for row in rows],
            "extra_info": [dict(row.extra_info) for row in rows]}
    for key in sorted({k for row in rows for k in row.extra_info}):
        cols.setdefault(key, [row.extra_info.get(key) for row in rows])
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return cols
    return {k: v for k, v in cols.items() if k in params}


@dataclass(frozen=True)
class WeightedRewards:
    """Several reward functions summed with weights, like TRL's reward_funcs + reward_weights: a
    function that returns None (NaN) for a response is left out of its sum; every component is kept."""

    fns: tuple
    weights: tuple
    low: float = 0.0
    high: float = 1.0
    style: str = "weighted"

    @property
    def name(self) -> str:
        return " + ".join(f"{w:g} x {f.name}" for f, w in zip(self.fns, self.weights))

    @property
    def check_ground_truth(self):
        return None

    def components(self, responses: list[str], rows: list) -> dict[str, list[float]]:
        return {f.name: [float(x) for x in f.batch(responses, rows)] for f in self.fns}

    def combine(self, comps: dict[str, list[float]]) -> list[float]:
        out = []
        for i in range(len(next(iter(comps.values())))):
            vals = [(w, comps[f.name][i]) for f, w in zip(self.fns, self.weights)]
            kept = [w * v for w, v in vals if not math.isnan(v)]
            out.append(sum(kept) if kept else float("nan"))
        return out

    def batch(self, responses: list[str], rows: list) -> list[float]:
        return self.combine(self.components(responses, rows))

    def __call__(self, response: str, ground_truth: str, data_source: str = "", extra_info: dict | None = None):
        return self.batch([response], [PromptRow(-1, data_source, [], str(ground_truth), dict(extra_info or {}))])[0]


def _style(fn: Callable) -> str:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: call it the plain way
        return "cropi"
    if "completions" in params:
        return "trl"
    return "verl" if "data_source" in params and "solution_str" in params else "cropi"


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
    """Import 'module:function' or 'file.py:function'; its style (cropi's, verl's or TRL's) by signature."""
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
    return RewardFn(fn, getattr(fn, "__name__", fn_name), _style(fn), low, high)


def load_reward(data_cfg):
    """The run's reward: data.reward_fns with data.reward_weights when given (summed like TRL), else
    data.reward_fn; checked against data.reward_range."""
    if data_cfg.reward_fns:
        fns = tuple(load_reward_fn(s, data_cfg.reward_range) for s in data_cfg.reward_fns)
        weights = tuple(float(w) for w in (data_cfg.reward_weights or [1.0] * len(fns)))
        low, high = (float(x) for x in data_cfg.reward_range)
        return WeightedRewards(fns, weights, low, high)
    return load_reward_fn(data_cfg.reward_fn, data_cfg.reward_range)


def _check(fn, r, where: str) -> float:
    if isinstance(r, bool):
        r = float(r)
    if hasattr(r, "item") and getattr(r, "ndim", 1) == 0:  # a 0-d numpy / torch number
        r = r.item()
    if not isinstance(r, (int, float)) or not math.isfinite(r) or not fn.low <= r <= fn.high:
        raise CropiError(f"reward function {fn.name!r} returned {r!r} on {where}; expected a finite number "
                         f"in [{fn.low:g}, {fn.high:g}] (data.reward_range)")
    return float(r)


def score_batch(fn, responses: list[str], rows: list, where: str) -> tuple[list[float], dict[str, list[float]] | None]:
    """Rewards of responses[i] to rows[i], each checked and its row named on a failure; with several
    weighted functions also each one's values (components, NaN where one returned None)."""
    if not isinstance(fn, (RewardFn, WeightedRewards)):
        fn = RewardFn(fn, getattr(fn, "__name__", repr(fn)))
    if isinstance(fn, RewardFn) and fn.style != "trl":  # one call per response: a failure names its row
        return [score(fn, r, row.ground_truth, f"{where} prompt {row.prompt_id}", row.data_source, row.extra_info)
                for r, row in zip(responses, rows)], None
    try:
        comps = fn.components(responses, rows) if isinstance(fn, WeightedRewards) else None
        raw = fn.combine(comps) if comps is not None else fn.batch(responses, rows)
    except CropiError:
        raise
    except Exception as e:
        raise CropiError(f"reward function {fn.name!r} failed on {where}: {type(e).__name__}: {e}") from e
    return [_check(fn, r, f"{where} prompt {row.prompt_id}") for r, row in zip(raw, rows)], comps


def score(fn: Callable, response: str, ground_truth: str, where: str, data_source: str = "",
          extra_info: dict | None = None) -> float:
    """Call a reward function on one response, turning its failures, non-numbers and out-of-range
    values into errors that name the row. `fn` is a RewardFn (its range) or a plain
    f(response, ground_truth) ([0, 1])."""
    if not isinstance(fn, (RewardFn, WeightedRewards)):
        fn = RewardFn(fn, getattr(fn, "__name__", repr(fn)))
    try:
        r = fn(response, ground_truth, data_source, extra_info)
    except Exception as e:
        raise CropiError(f"reward function {fn.name!r} failed on {where}: {type(e).__name__}: {e}") from e
    return _check(fn, r, where)
