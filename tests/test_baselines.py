"""The baselines select what they claim: `full` every prompt, `random` as many prompts as CROPI."""

import pyarrow.parquet as pq
import pytest
import numpy as np

from cropi.config import load_config
from cropi.data.dataset import PromptRow
from cropi.selection.fusion import select_from_scores


def _pool(n):
    return [PromptRow(i, "arith_add", [{"role": "user", "content": f"{i}+1="}], str(i + 1), {"family": "add"})
            for i in range(n)]


def _baseline(tmp_path, method, alpha, n, phase=0):
    from cropi.loop import _write_baseline_selection

    cfg = load_config("configs/tiny-cpu.yaml", [f"run.dir={tmp_path / method}", f"selection.alpha={alpha}"])
    _write_baseline_selection(cfg, phase, _pool(n), method)
    t = pq.read_table(tmp_path / method / f"phase-{phase}" / "selection.parquet").to_pylist()
    assert [r["prompt_id"] for r in t] == list(range(n))
    return {r["prompt_id"] for r in t if r["selected"]}


def test_random_baseline_selects_as_many_prompts_as_cropi(tmp_path):
    # alpha 0.07 of 100 prompts: CROPI takes 7 (alpha read as the decimal it was written as);
    # ceil(0.07 * 100) in floating point is ceil(7.000000000000001) = 8
    n, alpha = 100, 0.07
    scores = np.random.default_rng(0).standard_normal((n, 2))
    cropi = select_from_scores(scores, np.ones(n, bool), np.arange(n), alpha, "rrf", 60.0)
    picked = _baseline(tmp_path, "random", alpha, n)
    assert len(picked) == int(cropi["selected"].sum()) == 7
    assert len(_baseline(tmp_path, "full", alpha, n)) == n


def test_random_baseline_is_seeded_per_phase(tmp_path):
    a = _baseline(tmp_path / "a", "random", 0.1, 200, phase=0)
    b = _baseline(tmp_path / "b", "random", 0.1, 200, phase=0)
    c = _baseline(tmp_path / "c", "random", 0.1, 200, phase=1)
    assert a == b and a != c and len(a) == len(c) == 20


def _stats(n, seed=0):
    """Per-prompt (pass rate, reward std) as K=8 binary rewards give them; about half all-equal."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        k = int(rng.choice([0, 8, rng.integers(1, 8)]))
        r = np.array([1.0] * k + [0.0] * (8 - k))
        out[i] = (float(r.mean()), float(r.std()))
    return out


def test_filtered_draws_only_prompts_whose_rewards_vary():
    from cropi.selection.baselines import baseline_selected
    from cropi.selection.fusion import n_select

    ids, stats = list(range(200)), _stats(200)
    live = {i for i in ids if stats[i][1] > 0}
    assert 30 < len(live) < 170
    for seed in range(5):
        sel = baseline_selected(ids, "filtered", 0.1, seed, stats)
        picked = {i for i, s in zip(ids, sel) if s}
        assert picked <= live and len(picked) == n_select(0.1, 200)
    assert {i for i, s in zip(ids, baseline_selected(ids, "filtered", 0.1, 0, stats)) if s} != \
        {i for i, s in zip(ids, baseline_selected(ids, "filtered", 0.1, 1, stats)) if s}  # the seed draws
    few = {i: (1.0, 0.0) for i in ids} | {3: (0.5, 0.5), 7: (0.25, 0.43)}  # fewer live than n: all of them
    assert [i for i, s in zip(ids, baseline_selected(ids, "filtered", 0.1, 0, few)) if s] == [3, 7]


def test_difficulty_is_the_top_of_a_sort_by_p_times_one_minus_p():
    from cropi.selection.baselines import baseline_selected
    from cropi.selection.fusion import n_select

    ids, stats = list(range(200)), _stats(200, seed=1)
    n = n_select(0.1, 200)
    by_hand = sorted(ids, key=lambda i: (-(stats[i][0] * (1 - stats[i][0])), i))[:n]  # slow obvious reference
    sel = baseline_selected(ids, "difficulty", 0.1, 123, stats)
    assert [i for i, s in zip(ids, sel) if s] == sorted(by_hand)
    assert all(abs(stats[i][0] - 0.5) <= 0.375 for i in by_hand)  # the hardest-to-call, never all-right/all-wrong
    with pytest.raises(ValueError, match="no buffered trajectories"):
        baseline_selected(ids + [999], "difficulty", 0.1, 0, stats)


def test_buffer_reward_stats_are_each_prompts_pass_rate_and_std(tmp_path):
    import pyarrow as pa

    from cropi.store.buffer import prompt_reward_stats

    (tmp_path / "train").mkdir()
    rows = {"prompt_id": [5, 5, 5, 5, 9, 9, 9, 9], "reward": [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]}
    rows["group_std"] = [float(np.std([1, 0, 1, 1]))] * 4 + [0.0] * 4
    pq.write_table(pa.table(rows), tmp_path / "train" / "shard-00000.parquet")
    st = prompt_reward_stats(tmp_path)
    assert st[5] == pytest.approx((0.75, np.std([1, 0, 1, 1]))) and st[9] == (0.0, 0.0)
