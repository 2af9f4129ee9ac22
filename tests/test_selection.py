"""The selector's pure functions on cases small enough to check by hand (CROPI steps 4-5)."""

import math

import numpy as np
import pytest

from cropi.errors import ConfigError, CropiError
from cropi.selection.fusion import fuse, n_select, select_from_scores, top_n_mask
from cropi.selection.scoring import cosine_from_dots, projected_scores, ranks, sample_val_indices, val_target


def test_projected_cosine_by_hand():
    grads = np.array([[3, 4], [0, 0], [-4, 3], [3, 4]], np.float16)  # [4, k=2]
    zero = np.array([False, False, False, True])
    targets = np.array([[1.0, 0.0], [0.0, 2.0]])  # v_a = e1, v_b = 2 e2
    scores, eligible = projected_scores(grads, zero, targets)
    # row 0: ||g|| = 5; cos_a = 3 / (5 * 1) = 0.6; cos_b = 8 / (5 * 2) = 0.8
    # row 1: ||g|| = 0 -> ineligible, scored 0.0
    # row 2: cos_a = -4 / 5 = -0.8; cos_b = 6 / 10 = 0.6
    # row 3: same gradient as row 0 but flagged zero_grad -> ineligible (the flag wins)
    np.testing.assert_allclose(scores, [[0.6, 0.8], [0, 0], [-0.8, 0.6], [0, 0]], rtol=0, atol=1e-15)
    assert eligible.tolist() == [True, False, True, False]


def test_exact_cosine_from_dots_by_hand():
    dots = np.array([[6.0, -3.0], [1.0, 1.0]])  # [B=2, S=2]
    norms = np.array([2.0, 0.0])
    scores, eligible = cosine_from_dots(dots, norms, np.array([False, False]), np.array([5.0, 1.5]))
    # 6 / (2 * 5) = 0.6; -3 / (2 * 1.5) = -1.0; the second row has ||g|| = 0 -> ineligible, 0.0
    assert scores.tolist() == [[0.6, -1.0], [0.0, 0.0]] and eligible.tolist() == [True, False]


def test_val_target_drops_zero_gradients_and_means():
    grads = np.array([[1, 0], [3, 2], [0, 0], [5, 5]], np.float32)
    zero = np.array([False, False, False, True])
    v, used = val_target(np.array([10, 11, 12, 13]), grads, zero, max_val_grads=100, seed=0, set_name="a")
    # rows 2 (all zeros) and 3 (flagged) are dropped: mean of (1, 0) and (3, 2) = (2, 1)
    assert v.tolist() == [2.0, 1.0] and used.tolist() == [10, 11]
    v, used = val_target(np.arange(3), np.zeros((3, 2)), np.zeros(3, bool), 100, 0, "a")
    assert len(used) == 0 and v.tolist() == [0.0, 0.0]


def test_val_sampling_is_seeded_capped_and_per_set():
    idx = sample_val_indices(150, 100, seed=3, set_name="mul")
    assert len(idx) == 100 and len(set(idx.tolist())) == 100 and idx.tolist() == sorted(idx.tolist())
    assert idx.max() < 150
    assert np.array_equal(idx, sample_val_indices(150, 100, seed=3, set_name="mul"))
    assert not np.array_equal(idx, sample_val_indices(150, 100, seed=4, set_name="mul"))
    assert not np.array_equal(idx, sample_val_indices(150, 100, seed=3, set_name="mod"))
    assert sample_val_indices(40, 100, seed=3, set_name="mul").tolist() == list(range(40))  # all if fewer
    g = np.random.default_rng(0).standard_normal((150, 8))
    v, used = val_target(np.arange(150), g, np.zeros(150, bool), 100, 3, "mul")
    assert used.tolist() == idx.tolist() and np.allclose(v, g[idx].mean(axis=0))
    # the draw is over prompt ids in ascending order, whatever order the rows come in
    perm = np.random.default_rng(1).permutation(150)
    v2, used2 = val_target(perm + 1000, g[perm], np.zeros(150, bool), 100, 3, "mul")
    assert used2.tolist() == (idx + 1000).tolist()
    assert np.allclose(v2, g[idx].mean(axis=0))


def test_ranks_ties_by_prompt_id_and_ineligible_last():
    scores = np.array([0.5, 0.9, 0.5, -0.1, 0.95])
    ids = np.array([12, 11, 10, 13, 9])
    eligible = np.array([True, True, True, True, False])
    # 0.9 (id 11) -> 1; the 0.5 tie: id 10 before id 12 -> 2, 3; -0.1 -> 4;
    # id 9 is ineligible, so last (5) whatever its stored score
    assert ranks(scores, eligible, ids).tolist() == [3, 1, 2, 4, 5]
    # several ineligible prompts are ordered among themselves by prompt_id
    assert ranks(np.zeros(3), np.array([False, True, False]), np.array([5, 7, 2])).tolist() == [3, 1, 2]


# Four prompts A, B, C, D (ids 0-3) ranked by two sets: set 1 A B C D, set 2 C B D A.
RANKS = np.array([[1, 4], [2, 2], [3, 1], [4, 3]])
ALL = np.ones(4, bool)
IDS = np.arange(4)


def test_rrf_k60_rewards_consistency():
    fused = fuse(None, RANKS, ALL, "rrf", k_rrf=60)
    # A 1/61 + 1/64 = 0.032018, B 1/62 + 1/62 = 0.032258, C 1/63 + 1/61 = 0.032266, D 1/64 + 1/63 = 0.031498
    np.testing.assert_allclose(fused, [1/61 + 1/64, 2/62, 1/63 + 1/61, 1/64 + 1/63], rtol=1e-15)
    assert top_n_mask(fused, ALL, IDS, 2).tolist() == [False, True, True, False]  # C, B


def test_rrf_k0_rewards_one_top_rank():
    fused = fuse(None, RANKS, ALL, "rrf", k_rrf=0)
    # A 1 + 1/4 = 1.25, B 1/2 + 1/2 = 1.0, C 1/3 + 1 = 1.333, D 1/4 + 1/3 = 0.583: now A beats B
    np.testing.assert_allclose(fused, [1.25, 1.0, 4 / 3, 7 / 12], rtol=1e-15)
    assert top_n_mask(fused, ALL, IDS, 2).tolist() == [True, False, True, False]  # C, A


def test_topn_counts_only_each_sets_top_n():
    # n = 2: A 1/1 (set 2 rank 4 > 2 adds 0) = 1, B 1/2 + 1/2 = 1, C 0 + 1/1 = 1, D 0
    np.testing.assert_allclose(fuse(None, RANKS, ALL, "topn", n=2), [1.0, 1.0, 1.0, 0.0], rtol=1e-15)
    # three-way tie at 1.0 -> prompt_id ascending: A, B
    assert top_n_mask(fuse(None, RANKS, ALL, "topn", n=2), ALL, IDS, 2).tolist() == [True, True, False, False]
    # n = 3: A 1, B 1, C 1/3 + 1 = 1.333, D 0 + 1/3
    np.testing.assert_allclose(fuse(None, RANKS, ALL, "topn", n=3), [1.0, 1.0, 4 / 3, 1 / 3], rtol=1e-15)
    with pytest.raises(CropiError, match="top-n"):
        fuse(None, RANKS, ALL, "topn", n=None)


def test_max_fusion_and_ineligible_is_minus_inf():
    scores = np.array([[0.9, 0.1], [0.5, 0.6], [0.95, 0.95]])
    fused = fuse(scores, np.ones((3, 2)), np.array([True, True, False]), "max")
    assert fused.tolist() == [0.9, 0.6, -np.inf]
    with pytest.raises(ConfigError, match="selection.fusion"):
        fuse(scores, np.ones((3, 2)), np.ones(3, bool), "mean")


def test_n_select_rounds_up_on_the_decimal_alpha():
    assert math.ceil(0.07 * 100) == 8  # the binary-float trap: 0.07 * 100 = 7.000000000000001
    assert n_select(0.07, 100) == 7  # ceil(7) on the decimal 0.07
    assert n_select(0.1, 30) == 3  # ceil(3)
    assert n_select(0.1, 31) == 4  # ceil(3.1)
    assert n_select(0.25, 10) == 3  # ceil(2.5)
    assert n_select(0.001, 10) == 1  # ceil(0.01): never zero for alpha > 0
    assert n_select(1.0, 7) == 7 and n_select(1, 7) == 7


@pytest.mark.parametrize("alpha", [0, 0.0, -0.1, 1.5, float("nan"), True, "0.1"])
def test_alpha_outside_unit_interval_names_the_field(alpha):
    with pytest.raises(ConfigError, match=r"selection\.alpha"):
        n_select(alpha, 10)


def test_top_n_ties_at_the_cut_and_too_few_eligible():
    fused = np.array([0.3, 0.5, 0.5, -np.inf, 0.1])
    ids = np.array([4, 3, 1, 0, 2])
    eligible = np.array([True, True, True, False, True])
    assert np.flatnonzero(top_n_mask(fused, eligible, ids, 1)).tolist() == [2]  # tie 0.5: id 1 before id 3
    assert np.flatnonzero(top_n_mask(fused, eligible, ids, 3)).tolist() == [0, 1, 2]
    assert np.flatnonzero(top_n_mask(fused, eligible, ids, 10)).tolist() == [0, 1, 2, 4]  # all 4 eligible, no more


def test_select_from_scores_end_to_end_by_hand():
    # 5 prompts, 2 sets, alpha = 0.4 -> n = ceil(2) = 2; prompt 4 has a zero gradient
    scores = np.array([[0.9, -0.2], [0.1, 0.8], [0.7, 0.7], [0.2, 0.1], [0.0, 0.0]])
    eligible = np.array([True, True, True, True, False])
    ids = np.array([10, 11, 12, 13, 14])
    out = select_from_scores(scores, eligible, ids, alpha=0.4, fusion="rrf", k_rrf=0)
    # set 1 ranks: 0.9 -> 1, 0.7 -> 2, 0.2 -> 3, 0.1 -> 4, ineligible 5
    # set 2 ranks: 0.8 -> 1, 0.7 -> 2, 0.1 -> 3, -0.2 -> 4, ineligible 5
    assert out["ranks"].tolist() == [[1, 4], [4, 1], [2, 2], [3, 3], [5, 5]]
    # k = 0: 1 + 1/4 = 1.25, 1/4 + 1 = 1.25, 1/2 + 1/2 = 1.0, 2/3, -inf
    np.testing.assert_allclose(out["fused"], [1.25, 1.25, 1.0, 2 / 3, -np.inf], rtol=1e-15)
    assert out["n_select"] == 2 and out["selected"].tolist() == [True, True, False, False, False]
    # max fusion: 0.9, 0.8, 0.7, 0.2 -> prompts 10 and 11 again; topn (n=2): 1, 1, 1/2 + 1/2 = 1 -> tie, ids 10, 11
    for fusion in ("max", "topn"):
        sel = select_from_scores(scores, eligible, ids, 0.4, fusion, 60)["selected"]
        assert sel.tolist() == [True, True, False, False, False], fusion
