"""DAPO dynamic sampling: the accumulator (pure) and a real GRPO phase that uses it."""

import json
import subprocess

import pytest
import torch

from cropi.algo.dynamic import DynamicBatch, varied


def _round(rewards):
    r = torch.tensor(rewards, dtype=torch.float64)
    return {"prompt_ids": [f"p{i}" for i in range(len(rewards))], "rewards": rewards}, r


def test_varied_keeps_exactly_the_groups_whose_rewards_differ():
    r = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [0.5, 0.5001]])
    by_hand = [i for i in range(4) if len(set(r[i].tolist())) > 1]
    assert varied(r) == by_hand == [1, 3]


def test_batch_fills_from_later_rounds_in_order_and_truncates():
    acc = DynamicBatch(want=3, max_extra_rounds=5)
    acc.add(*_round([[1, 1], [0, 1], [0, 0]]))
    assert not acc.done()
    acc.add(*_round([[1, 0], [1, 1], [0, 1], [1, 0]]))
    assert acc.done() and acc.rounds == 2 and acc.generated_groups == 7
    out, rewards = acc.batch()
    assert out["prompt_ids"] == ["p1", "p0", "p2"]  # round 1's p1, then round 2's first two varied groups
    assert rewards.tolist() == [[0, 1], [1, 0], [0, 1]]
    assert varied(rewards) == [0, 1, 2]


def test_cap_stops_with_a_short_batch_or_none():
    acc = DynamicBatch(want=4, max_extra_rounds=2)
    for _ in range(3):
        assert not acc.done()
        acc.add(*_round([[1, 1], [0, 1]]))
    assert acc.done() and acc.rounds == 3  # the first round and 2 extra
    assert acc.batch()[1].shape[0] == 3
    none = DynamicBatch(want=2, max_extra_rounds=0)
    none.add(*_round([[1, 1], [0, 0]]))
    assert none.done() and none.batch()[1].shape[0] == 0


@pytest.mark.integration
@pytest.mark.slow  # minutes: `make test-all` (CI runs the rest)
def test_phase_with_dynamic_sampling_trains_only_varied_groups_within_its_cap(tiny_model, tmp_path):
    from tests.test_trainer import _select_family, _train_args

    sel = _select_family(tmp_path, "mul")
    # G = 2: a group is all-equal with probability p^2 + (1-p)^2 (about half here), so extra rounds are needed
    args = _train_args(tmp_path, sel, "trainer.dynamic_sampling=true", "trainer.dynamic_max_batches=1",
                       "trainer.group_size=2", "trainer.prompts_per_step=8", "trainer.eval_every=100",
                       "trainer.eval_samples=1", "trainer.save_every=100") + ["--steps", "4"]
    run = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    steps = [json.loads(x) for x in (tmp_path / "run" / "phase-0" / "train_metrics.jsonl").read_text().splitlines()][1:]
    assert len(steps) == 4
    for m in steps:
        assert m["zero_adv_prompts"] == 0, m  # no equal-reward group reached the trainer
        assert 1 <= m["dynamic_rounds"] <= 2 and m["rollout_prompts"] == 8 * m["dynamic_rounds"], m
        assert m["trained_prompts"] == min(8, m["rollout_prompts"] - m["rollout_zero_adv_prompts"]), m
    assert any(m["dynamic_rounds"] == 2 for m in steps)  # the extra round was really used
