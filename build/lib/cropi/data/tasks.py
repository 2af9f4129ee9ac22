"""A synthetic suite of verifiable arithmetic tasks, made locally from a seed.

Families (graded difficulty by operand size):
  add  a+b, a, b < 10**d, d in {1, 2}
  sub  a-b with a >= b, a < 10**d, d in {1, 2}
  mul  a*b, a < 10, b < 10**d, d in {1, 2}
  mod  a%b, a < 10**d, d in {2, 3}, 2 <= b <= 9
  div  a/b (floor), a < 10**d, d in {2, 3}, 2 <= b <= 9   (not in the default pool)
A prompt is the bare expression ("37+5="), the answer its integer value ("42").
The training pool mixes all configured families; there is one validation set per family,
disjoint from the pool. Rows follow verl's schema (see `cropi.data.dataset`).
"""

from __future__ import annotations

import random
from pathlib import Path

from cropi.data.dataset import write_rows

_OPS = {"add": "+", "sub": "-", "mul": "*", "mod": "%", "div": "/"}


def make_problem(family: str, rng: random.Random) -> tuple[str, int, int]:
    """One problem: (expression, answer, difficulty level 1 or 2)."""
    level = rng.choice((1, 2))
    if family == "add":
        a, b = rng.randrange(10**level), rng.randrange(10**level)
        ans = a + b
    elif family == "sub":
        a, b = rng.randrange(10**level), rng.randrange(10**level)
        a, b = max(a, b), min(a, b)
        ans = a - b
    elif family == "mul":
        a, b = rng.randrange(10), rng.randrange(10**level)
        ans = a * b
    elif family == "mod":
        a, b = rng.randrange(10 ** (level + 1)), rng.randrange(2, 10)
        ans = a % b
    elif family == "div":
        a, b = rng.randrange(10 ** (level + 1)), rng.randrange(2, 10)
        ans = a // b
    else:
        raise ValueError(f"unknown task family {family!r}")
    return f"{a}{_OPS[family]}{b}=", ans, level


def make_row(family: str, expr: str, answer: int, level: int, split: str, index: int) -> dict:
    return {
        "data_source": f"arith_{family}",
        "prompt": [{"role": "user", "content": expr}],
        "ability": "arithmetic",
        "reward_model": {"style": "rule", "ground_truth": str(answer)},
        "extra_info": {"split": split, "index": index, "family": family, "difficulty": level},
    }


def make_suite(families: list[str], train_size: int, val_size: int, seed: int) -> tuple[list[dict], dict[str, list[dict]]]:
    """(training pool, {family: validation rows}); validation expressions never occur in the pool."""
    rng = random.Random(seed)
    val: dict[str, list[dict]] = {}
    seen: set[str] = set()
    for fam in families:
        rows, tries = [], 0
        while len(rows) < val_size and tries < 100 * val_size:
            tries += 1
            expr, ans, level = make_problem(fam, rng)
            if expr not in seen:
                seen.add(expr)
                rows.append(make_row(fam, expr, ans, level, "val", len(rows)))
        val[fam] = rows
    train = []
    while len(train) < train_size:
        fam = families[len(train) % len(families)]
        expr, ans, level = make_problem(fam, rng)
        if expr in seen:  # keep validation prompts out of the pool; the pool itself may repeat
            continue
        train.append(make_row(fam, expr, ans, level, "train", len(train)))
    rng.shuffle(train)
    for i, row in enumerate(train):
        row["extra_info"]["index"] = i
    return train, val


def write_suite(out_dir: str | Path, families: list[str], train_size: int, val_size: int, seed: int) -> dict[str, Path]:
    """Write train.parquet and val_<family>.parquet; returns {'train': path, family: path, ...}."""
    out = Path(out_dir)
    train, val = make_suite(families, train_size, val_size, seed)
    paths = {"train": write_rows(train, out / "train.parquet")}
    for fam, rows in val.items():
        paths[fam] = write_rows(rows, out / f"val_{fam}.parquet")
    return paths
