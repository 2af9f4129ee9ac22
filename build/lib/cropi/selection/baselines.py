"""The selections practitioners already have, as arms beside CROPI (same count, same pool):

    full        every prompt
    random      a seeded draw of n_select(alpha, N) prompts
    filtered    a seeded draw of n among the prompts whose K buffered rewards vary (the others
                have advantage 0, hence no GRPO signal); all of them when fewer than n vary
    difficulty  the authors' baseline: the n prompts with the largest p(1 - p), p = the buffered
                pass rate (mean reward over K); ties by prompt id

Pure: prompt ids and per-prompt buffer statistics in, a bool mask in prompt-id order out.
"""

from __future__ import annotations

import random

import numpy as np

from cropi.selection.fusion import n_select

NEEDS_BUFFER = ("filtered", "difficulty")


def baseline_selected(prompt_ids: list[int], method: str, alpha: float, seed: int,
                      stats: dict[int, tuple[float, float]] | None = None) -> np.ndarray:
    """-> bool [N] in the order of prompt_ids. stats: prompt id -> (pass rate p, reward std),
    required by `filtered` and `difficulty`."""
    n = n_select(alpha, len(prompt_ids))
    if method == "full":
        return np.ones(len(prompt_ids), bool)
    if method == "random":
        keep = set(random.Random(seed).sample(list(prompt_ids), n))
    elif method in NEEDS_BUFFER:
        if stats is None:
            raise ValueError(f"{method} needs the buffer's per-prompt statistics")
        missing = [i for i in prompt_ids if i not in stats]
        if missing:
            raise ValueError(f"{method}: prompts {missing[:5]} have no buffered trajectories")
        if method == "filtered":
            live = [i for i in prompt_ids if stats[i][1] > 0]
            keep = set(random.Random(seed).sample(live, min(n, len(live))))
        else:
            order = sorted(prompt_ids, key=lambda i: (-stats[i][0] * (1 - stats[i][0]), i))
            keep = set(order[:n])
    else:
        raise ValueError(f"unknown baseline {method!r}")
    return np.array([i in keep for i in prompt_ids], bool)
