"""Data for configs/verl-gsm8k.yaml: the synthetic arithmetic suite written in verl's GSM8K schema,
as verl's examples/data_preprocess/gsm8k.py writes GSM8K, so a verl recipe runs on the tiny model:

    data_source   "openai/gsm8k"        (verl's default_compute_score sends it to the gsm8k scorer)
    prompt        [{"role": "user", "content": QUESTION + INSTRUCTION}]
    ability       "math"
    reward_model  {"style": "rule", "ground_truth": "42"}
    extra_info    {"split", "index", "answer", "question"}

    python -m cropi.data.verl_example OUT_DIR [--train N] [--test N] [--seed S]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from cropi.data.dataset import write_rows
from cropi.data.tasks import make_problem

INSTRUCTION = ' Let\'s think step by step and output the final answer after "####".'


def rows(n: int, split: str, rng: random.Random, seen: set[str]) -> list[dict]:
    out = []
    while len(out) < n:
        expr, ans, _ = make_problem(rng.choice(("add", "sub", "mul")), rng)
        if expr in seen:
            continue
        seen.add(expr)
        out.append({"data_source": "openai/gsm8k", "prompt": [{"role": "user", "content": expr + INSTRUCTION}],
                    "ability": "math", "reward_model": {"style": "rule", "ground_truth": str(ans)},
                    "extra_info": {"split": split, "index": len(out), "answer": f"#### {ans}", "question": expr}})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cropi.data.verl_example")
    ap.add_argument("out")
    ap.add_argument("--train", type=int, default=512)
    ap.add_argument("--test", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    rng, seen = random.Random(a.seed), set()
    test = rows(a.test, "test", rng, seen)
    train = rows(a.train, "train", rng, seen)
    out = Path(a.out)
    write_rows(train, out / "train.parquet")
    write_rows(test, out / "test.parquet")
    print(f"wrote {len(train)} + {len(test)} rows under {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
