"""Fusing several validation sets into one score, and keeping the top alpha (CROPI step 5).

Pure numpy, no I/O. With S validation sets and ranks r_j from `scoring.ranks`:

- rrf:  fused = sum_j 1 / (k_rrf + r_j)               Reciprocal Rank Fusion (Cormack et al. 2009,
                                                       k_rrf = 60); k_rrf = 0 gives sum_j 1/r_j.
- topn: fused = sum_j [r_j <= n] / r_j                 the authors' script: each set contributes
                                                       1/rank only within its own top-n list,
                                                       n = the number selected, k = 0.
- max:  fused = max_j cos_j                            the best cosine over sets.

An ineligible (zero-gradient) prompt gets fused = -inf and is never selected.

How many: n_select = ceil(alpha * N), N = the whole training pool (zero-gradient prompts
included), computed on alpha's shortest decimal form (`repr`) so that alpha = 0.07 of 100 prompts
is 7, not ceil(7.000000000000001) = 8. The n_select prompts with the highest fused score are
kept, ties by prompt_id ascending; if fewer than n_select prompts are eligible, all eligible ones
are kept.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from cropi.errors import ConfigError
from cropi.selection.scoring import ranks as set_ranks

FUSIONS = ("rrf", "topn", "max")


def n_select(alpha: float, pool_size: int) -> int:
    """ceil(alpha * N) with alpha read as the decimal it was written as; alpha must be in (0, 1]."""
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not (0 < alpha <= 1):
        raise ConfigError(f"config field selection.alpha: must be in (0, 1], got {alpha!r}")
    return math.ceil(Fraction(repr(float(alpha))) * pool_size)


def fuse(scores: np.ndarray, rank_matrix: np.ndarray, eligible: np.ndarray, fusion: str,
         k_rrf: float = 60.0, n: int | None = None) -> np.ndarray:
    """One fused score per prompt: scores [N, S] cosines, rank_matrix [N, S] 1-based ranks,
    eligible [N]. `n` is the top-n cut for fusion='topn'. Returns float64 [N]."""
    r = np.asarray(rank_matrix, np.float64)  # [N, S]
    if fusion == "rrf":
        fused = (1.0 / (k_rrf + r)).sum(axis=1)
    elif fusion == "topn":
        if n is None or n < 1:
            raise ConfigError(f"fusion 'topn' needs the top-n cut n >= 1, got {n!r}")
        fused = np.where(r <= n, 1.0 / r, 0.0).sum(axis=1)
    elif fusion == "max":
        fused = np.asarray(scores, np.float64).max(axis=1)
    else:
        raise ConfigError(f"config field selection.fusion: must be one of {list(FUSIONS)}, got {fusion!r}")
    return np.where(np.asarray(eligible, dtype=bool), fused, -np.inf)


def top_n_mask(fused: np.ndarray, eligible: np.ndarray, prompt_ids: np.ndarray, n: int) -> np.ndarray:
    """Boolean [N]: the n eligible prompts with the highest fused score, ties by prompt_id asc."""
    eligible = np.asarray(eligible, dtype=bool)
    order = np.lexsort((np.asarray(prompt_ids), -np.asarray(fused, np.float64), ~eligible))
    chosen = order[: min(n, int(eligible.sum()))]
    mask = np.zeros(len(fused), bool)
    mask[chosen] = True
    return mask


def select_from_scores(scores: np.ndarray, eligible: np.ndarray, prompt_ids: np.ndarray,
                       alpha: float, fusion: str, k_rrf: float) -> dict:
    """Ranks, fused score and selection from a pool's scores [N, S]: the whole of step 5.
    Returns {"ranks": int64 [N, S], "fused": float64 [N], "selected": bool [N], "n_select": int}."""
    scores = np.asarray(scores, np.float64)
    n = n_select(alpha, len(scores))
    rank_matrix = np.stack([set_ranks(scores[:, j], eligible, prompt_ids) for j in range(scores.shape[1])], axis=1)
    fused = fuse(scores, rank_matrix, eligible, fusion, k_rrf, n)
    return {"ranks": rank_matrix, "fused": fused, "selected": top_n_mask(fused, eligible, prompt_ids, n),
            "n_select": n}
