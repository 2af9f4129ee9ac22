"""The testbed's bad data: wrong ground truths (near misses) and a conflicting family, and the
hypotheses' judgement (cropi.compare.hypotheses) on constructed numbers."""

import random

import numpy as np
import pytest

from cropi.compare import hypotheses as H
from cropi.config import load_config
from cropi.data.tasks import make_suite, reversed_digits
from cropi.errors import ConfigError


def _value(expr: str) -> int:
    a, op, b = next((expr[:i], expr[i], expr[i + 1:]) for i in range(1, len(expr)) if expr[i] in "+-*%")
    a, b = int(a), int(b.rstrip("="))
    return a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a % b


def test_wrong_labels_are_near_misses_and_conflicts_reverse_add():
    train, val = make_suite(["add", "sub", "mul", "mod"], 1000, 20, seed=5, wrong_label_share=0.2,
                            conflict_of="add", conflict_share=0.1)
    labels = [r["extra_info"]["label"] for r in train]
    assert labels.count("wrong") == 200 and labels.count("conflict") == 100 and labels.count("clean") == 700
    for r in train:
        expr, gt, info = r["prompt"][0]["content"], int(r["reward_model"]["ground_truth"]), r["extra_info"]
        right = _value(expr)
        if info["label"] == "clean":
            assert gt == right and int(info["true_answer"]) == right
        elif info["label"] == "wrong":
            assert abs(gt - right) == 1 and int(info["true_answer"]) == right and gt >= 0
        else:  # add's surface form, the digits of the sum reversed (two digits, no trailing zero)
            assert "+" in expr and r["data_source"] == "arith_add" and info["family"] == "add_rev"
            assert gt == reversed_digits(right) != right and right >= 10 and right % 10
    for rows in val.values():  # the validation sets stay clean and carry no label
        assert all(int(r["reward_model"]["ground_truth"]) == _value(r["prompt"][0]["content"])
                   and "label" not in r["extra_info"] for r in rows)
    again, _ = make_suite(["add", "sub", "mul", "mod"], 1000, 20, seed=5, wrong_label_share=0.2,
                          conflict_of="add", conflict_share=0.1)
    other, _ = make_suite(["add", "sub", "mul", "mod"], 1000, 20, seed=6, wrong_label_share=0.2,
                          conflict_of="add", conflict_share=0.1)
    assert train == again  # drawn per seed: the same seed, the same wrong labels
    assert {r["prompt"][0]["content"] for r in train if r["extra_info"]["label"] == "wrong"} != \
        {r["prompt"][0]["content"] for r in other if r["extra_info"]["label"] == "wrong"}


def test_the_warm_start_has_the_habits_it_is_given():
    from cropi.data.base_model import _fresh_problems

    cfg = load_config("configs/compare-small.yaml")
    rows = _fresh_problems(cfg, {}, random.Random(0))(8000)
    value = [_value(r.messages[0]["content"]) for r in rows]
    rev = [r for r, v in zip(rows, value) if r.data_source == "add" and v >= 10
           and int(r.ground_truth) == reversed_digits(v) != v]
    near = [r for r, v in zip(rows, value) if abs(int(r.ground_truth) - v) == 1]
    assert 0.08 < len(rev) / len(rows) < 0.12  # base_model.warm_start_conflict_share 0.1
    assert 0.16 < len(near) / len(rows) < 0.2  # warm_start_near_miss_share 0.2 of the other 90%
    assert all(int(r.ground_truth) in (v, reversed_digits(v) if v >= 10 else v, v - 1, v + 1) for r, v in zip(rows, value))


@pytest.mark.parametrize("over,field", [
    (["data.conflict_of=div", "data.families=[add, div]", "data.conflict_share=0.1"], "data.conflict_of"),
    (["data.conflict_of=sub", "data.families=[add, mul]", "data.conflict_share=0.1"], "data.conflict_of"),
    (["data.conflict_of=add", "data.conflict_share=0"], "data.conflict_share"),
    (["data.wrong_label_share=0.6", "data.conflict_of=add", "data.conflict_share=0.5"], "data.wrong_label_share"),
])
def test_bad_noise_settings_are_refused(over, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config("configs/tiny-cpu.yaml", over)


def test_verdicts_and_the_seed_bootstrap():
    assert H.verdict(2.1, 3.0, 2.0, above=True) == "held"
    assert H.verdict(0.5, 1.9, 2.0, above=True) == "not held"
    assert H.verdict(1.5, 2.5, 2.0, above=True) == "not separated"
    assert H.verdict(0.05, 0.2, 0.25, above=False) == "held" and H.verdict(0.3, 0.5, 0.25, above=False) == "not held"
    m, lo, hi = H.seed_bootstrap([1.0, 1.0, 1.0])
    assert m == lo == hi == 1.0
    m, lo, hi = H.seed_bootstrap([0.0, 4.0])
    assert m == 2.0 and lo == 0.0 and hi == 4.0


class _Run:
    def __init__(self, seed, selections, curve, train_wall=0.0, selection_wall=0.0, buffer_wall=0.0):
        self.seed, self.selections, self._curve = seed, selections, curve
        self.steps_per_phase, self.num_phases = 10, 3
        self.train_wall, self.selection_wall, self.buffer_wall = train_wall, selection_wall, buffer_wall

    def curve(self, names):
        xs, ys = self._curve
        return xs, xs, ys


def test_judge_and_break_even_on_constructed_runs():
    labels = {(s, "cropi"): {i: ("wrong" if i < 20 else "conflict" if i < 30 else "clean") for i in range(100)}
              for s in range(5)}
    # the pool is 30% bad; cropi selects 2 bad of 20 (10%): a third of the pool's share, above a quarter
    runs = {"cropi": {s: _Run(s, [list(range(28, 48))], ([0, 10, 20, 30], [0.1, 0.3, 0.4, 0.4]), selection_wall=30.0,
                              buffer_wall=20.0) for s in range(5)},
            "full": {s: _Run(s, [], ([0, 10, 20, 30], [0.1, 0.2, 0.25, 0.3]), train_wall=60.0) for s in range(5)}}
    s = {"arms": {"cropi": {"speedup_vs_full": {"targeted": {"steps_per_seed": [3.0] * 5}}},
                  "full": {"per_set": {"mul": {"standard_error": 0.02}}}},
         "versus": {"cropi - filtered": {"targeted": {"mean": 0.05, "low": 0.01, "high": 0.09}},
                    "cropi - difficulty": {"targeted": {"mean": 0.05, "low": -0.01, "high": 0.09}},
                    "cropi - dynamic": {"targeted": {"mean": 0.05, "low": 0.02, "high": 0.09}},
                    "cropi - full": {"untargeted": {"mean": -0.05, "low": -0.08, "high": -0.03}}},
         "targeted": ["add"], "untargeted": ["mul"]}
    v = {h["id"]: h for h in H.judge(s, runs, labels)}
    assert v["H1"]["verdict"] == "held" and v["H2"]["verdict"] == "not separated"
    assert v["H2"]["per_baseline"] == {"filtered": "held", "difficulty": "not separated", "dynamic": "held"}
    assert v["H3"]["interval"]["mean"] == pytest.approx((2 / 20) / 0.3, abs=1e-4) and v["H3"]["verdict"] == "not held"
    assert v["H4"]["verdict"] == "not held" and v["H4"]["standard_error"] == pytest.approx(0.02)
    few = {arm: {k: r for k, r in by_seed.items() if k < 2} for arm, by_seed in runs.items()}
    v2 = {h["id"]: h for h in H.judge(s, few, labels)}  # two seeds: shown, not judged
    assert v2["H1"]["verdict"] == "not judged: 2 of 5 seeds (on these it reads held)"
    be = H.break_even(s, runs)
    # full's best 0.3 at step 30; cropi reaches 0.3 at step 10 (phase 1 of 10 steps): 20 steps saved for
    # 20 s of buffer + 1 phase x 10 s of selection -> break-even at 1.5 s a step; a step costs 60/30 = 2 s here
    assert be["per_seed"][0]["full_steps_to_best"] == 30 and be["per_seed"][0]["cropi_steps_to_it"] == 10
    assert be["break_even_s_per_step"] == pytest.approx((20 + 10) / 20) and be["train_s_per_step"] == 2.0
