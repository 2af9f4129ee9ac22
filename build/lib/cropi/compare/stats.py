"""The comparison's statistics, pure numpy: no Ray, no files.

A measurement is a list over seeds of a list over validation sets of per-prompt values (a
prompt's pass rate, or a paired difference of two pass rates on the same prompt). Its value is
the mean over seeds of the mean over sets of the mean over prompts. Its uncertainty comes from
both the seeds (each draws its own pool and validation sets and trains its own policy) and the
prompts (each set is a sample of its task): `bootstrap` resamples seeds with replacement, then
each chosen seed's prompts with replacement within each set (a two-level bootstrap), and
returns the percentile interval.
"""

from __future__ import annotations

import math

import numpy as np

Measurement = list[list[np.ndarray]]  # [seed][set] -> per-prompt values


def point(x: Measurement) -> float:
    return float(np.mean([np.mean([np.mean(v) for v in sets]) for sets in x]))


def bootstrap(x: Measurement, n: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(estimate, low, high): the two-level bootstrap percentile interval of `point(x)`."""
    if not x or any(not sets for sets in x) or any(len(v) == 0 for sets in x for v in sets):
        raise ValueError("bootstrap needs at least one seed, one set per seed and one value per set")
    rng = np.random.default_rng(seed)
    stats = np.empty(n)
    for b in range(n):
        picks = rng.integers(0, len(x), len(x))
        stats[b] = np.mean([np.mean([np.mean(v[rng.integers(0, len(v), len(v))]) for v in x[s]]) for s in picks])
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return point(x), float(lo), float(hi)


def standard_error(values: np.ndarray) -> float:
    """Standard error of a mean over prompts (sample std / sqrt n); 0 for a single value."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0


def first_reaching(xs: list[float], ys: list[float], target: float) -> float | None:
    """The first x at which y >= target (None if never)."""
    for x, y in zip(xs, ys):
        if y >= target:
            return x
    return None


def speedup(ref_x: list[float], ref_y: list[float], x: list[float], y: list[float]) -> float | None:
    """The paper's speed-up: the x (steps or seconds) at which the reference reaches its best y,
    divided by the x at which this curve first reaches that y; None if it never does. Curves
    start at x = 0 (the shared base model); a point at x = 0 never counts as reaching."""
    best = max(ref_y)
    ref_at = first_reaching(ref_x, ref_y, best)
    pts = [(a, b) for a, b in zip(x, y) if a > 0]
    at = first_reaching([a for a, _ in pts], [b for _, b in pts], best)
    if at is None or ref_at is None or ref_at <= 0:
        return None
    return ref_at / at
