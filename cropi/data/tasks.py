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

Like scraped RLVR pools, the training pool can carry two kinds of bad data (validation stays clean):
  wrong labels  a share of the prompts gets a near miss as ground truth (the answer +- 1): an answer
                the model itself sometimes gives, so such a group's rewards vary and pass any
                zero-variance filter, while its gradient teaches the wrong answer
  conflict      a share of the prompts has the surface form of a family ("37+5=") but another answer
                rule: the digits of the result reversed ("24"), a rule the warm start has also seen
                (cropi.data.base_model), so the base model sometimes follows it
Each training row records which it is in extra_info["label"] (clean | wrong | conflict) and the
right answer in extra_info["true_answer"]; a conflicting row's family is FAMILY_rev.
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


def reversed_digits(n: int) -> int:
    return int(str(n)[::-1])


def make_conflict_problem(family: str, rng: random.Random) -> tuple[str, int, int]:
    """`family`'s surface form with the conflicting rule: the result's digits reversed. Only results
    whose reversal differs and keeps every digit (two digits or more, no trailing zero)."""
    while True:
        expr, ans, level = make_problem(family, rng)
        if ans >= 10 and ans % 10 and reversed_digits(ans) != ans:
            return expr, reversed_digits(ans), level


def near_miss(answer: int, rng: random.Random) -> int:
    """A wrong ground truth the model plausibly gives: one off (never negative)."""
    return answer + 1 if answer == 0 else answer + rng.choice((-1, 1))


def make_row(family: str, expr: str, answer: int, level: int, split: str, index: int, data_source: str = "",
             label: str = "clean", true_answer: int | None = None) -> dict:
    info = {"split": split, "index": index, "family": family, "difficulty": level}
    if split == "train":
        info.update(label=label, true_answer=str(answer if true_answer is None else true_answer))
    return {
        "data_source": data_source or f"arith_{family}",
        "prompt": [{"role": "user", "content": expr}],
        "ability": "arithmetic",
        "reward_model": {"style": "rule", "ground_truth": str(answer)},
        "extra_info": info,
    }


def make_suite(families: list[str], train_size: int, val_size: int, seed: int, wrong_label_share: float = 0.0,
               conflict_of: str = "", conflict_share: float = 0.0) -> tuple[list[dict], dict[str, list[dict]]]:
    """(training pool, {family: validation rows}); validation expressions never occur in the pool.
    A conflict_share of the pool is conflicting (conflict_of's form, reversed answers), then a
    wrong_label_share of the whole pool (drawn among the other rows) gets near-miss labels."""
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
    n_conflict = round(conflict_share * train_size) if conflict_of else 0
    train = []
    while len(train) < train_size - n_conflict:
        fam = families[len(train) % len(families)]
        expr, ans, level = make_problem(fam, rng)
        if expr in seen:  # keep validation prompts out of the pool; the pool itself may repeat
            continue
        train.append(make_row(fam, expr, ans, level, "train", len(train)))
    while len(train) < train_size:
        expr, ans, level = make_conflict_problem(conflict_of, rng)
        if expr in seen:
            continue
        train.append(make_row(f"{conflict_of}_rev", expr, ans, level, "train", len(train),
                              data_source=f"arith_{conflict_of}", label="conflict",
                              true_answer=reversed_digits(ans)))
    clean = [i for i, r in enumerate(train) if r["extra_info"]["label"] == "clean"]
    for i in sorted(rng.sample(clean, min(len(clean), round(wrong_label_share * train_size)))):
        r = train[i]
        right = int(r["reward_model"]["ground_truth"])
        r["reward_model"]["ground_truth"] = str(near_miss(right, rng))
        r["extra_info"]["label"] = "wrong"
    rng.shuffle(train)
    for i, row in enumerate(train):
        row["extra_info"]["index"] = i
    return train, val


def write_suite(out_dir: str | Path, families: list[str], train_size: int, val_size: int, seed: int,
                wrong_label_share: float = 0.0, conflict_of: str = "", conflict_share: float = 0.0) -> dict[str, Path]:
    """Write train.parquet and val_<family>.parquet; returns {'train': path, family: path, ...}."""
    out = Path(out_dir)
    train, val = make_suite(families, train_size, val_size, seed, wrong_label_share, conflict_of, conflict_share)
    paths = {"train": write_rows(train, out / "train.parquet")}
    for fam, rows in val.items():
        paths[fam] = write_rows(rows, out / f"val_{fam}.parquet")
    return paths
