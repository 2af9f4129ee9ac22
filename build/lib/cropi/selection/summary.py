"""What a selection looks like, in numbers a person can check (selection_summary.json).

- composition: per family and per data_source, how many prompts the pool holds, how many have a
  zero gradient, how many were selected, and the two fractions (pool share vs selected share).
  A family whose selected share is far above its pool share is what the validation sets asked for.
- per set: the cosine distribution over eligible prompts (mean, std, min, p10, p50, p90, max),
  the mean and minimum over the selected ones, and how many selected prompts sit in that set's
  own top-n (n = n_select): how much each set got its way in the fusion.
- overlap: Jaccard |A & B| / |A | B| of the selected prompt ids with the previous phase's.
"""

from __future__ import annotations

import numpy as np


def composition(labels: np.ndarray, eligible: np.ndarray, selected: np.ndarray) -> dict:
    """{label: {pool, zero_grad, selected, pool_frac, selected_frac}} sorted by label."""
    n_pool, n_sel = len(labels), int(selected.sum())
    out = {}
    for label in sorted(set(labels.tolist())):
        m = labels == label
        pool, sel = int(m.sum()), int((m & selected).sum())
        out[str(label)] = {"pool": pool, "zero_grad": int((m & ~eligible).sum()), "selected": sel,
                           "pool_frac": pool / n_pool if n_pool else 0.0,
                           "selected_frac": sel / n_sel if n_sel else 0.0}
    return out


def score_stats(scores: np.ndarray, eligible: np.ndarray, selected: np.ndarray, rank: np.ndarray,
                n: int) -> dict:
    """Distribution of one set's cosines [N] over eligible prompts (at least one), and over the
    selected ones."""
    s = scores[eligible]
    q10, q50, q90 = np.quantile(s, [0.1, 0.5, 0.9])
    sel = scores[selected]
    return {"mean": float(s.mean()), "std": float(s.std()), "min": float(s.min()), "p10": float(q10),
            "p50": float(q50), "p90": float(q90), "max": float(s.max()),
            "selected_mean": float(sel.mean()) if len(sel) else None,
            "selected_min": float(sel.min()) if len(sel) else None,
            "selected_in_own_top_n": int((selected & (rank <= n)).sum())}


def jaccard(a: np.ndarray, b: np.ndarray) -> float | None:
    """|A & B| / |A | B| of two id sets; None when both are empty."""
    sa, sb = set(np.asarray(a).tolist()), set(np.asarray(b).tolist())
    union = len(sa | sb)
    return len(sa & sb) / union if union else None
