"""Influence scores: validation targets, cosine scores and per-set ranks (CROPI step 4).

Pure numpy, no I/O and no Ray. The streaming driver (`select.py`) feeds these one batch of
training prompts at a time; a test feeds them the whole pool at once and gets the same numbers.

- Target of a validation set V_j: v_j = mean gradient of at most `max_val_grads` of its
  prompts (paper: 100), chosen by `val_target_prompts` in both modes. Zero-gradient validation
  prompts are dropped first (they would only shrink the mean, never turn it, but would take
  sampling slots). If more remain than `max_val_grads`, a subset of the remaining prompts
  (sorted by prompt_id) is drawn without replacement by
  `np.random.default_rng([seeds.val_targets(run seed), crc32(set name)])`: a set's draw depends
  on the run seed and its name only, not on the phase, the mode or which other sets exist, so
  every phase is scored against targets formed from the same prompts. In `exact` mode the
  influence stage forms v_j itself from those prompts and the selector only gets ||v_j||
  (`val_targets.json`); in `projected` mode the selector averages their projected gradients.
- Score: cos(g, v_j) = <g, v_j> / (||g|| ||v_j||), accumulated in float64 whatever the stored
  dtype (fp16 values are exact in float64), bit-identical however the rows are batched. Not
  clipped to [-1, 1].
- A training prompt is *eligible* iff its `zero_grad` flag is false and ||g|| != 0 (so a NaN
  gradient is not mistaken for a zero one: its NaN score is for the caller to reject). An ineligible
  prompt's cosine is undefined; its score is stored as 0.0 and it is never selected.
- Ranks are 1-based and ordinal (no shared ranks): eligible prompts by score descending, ties by
  prompt_id ascending, then every ineligible prompt after them by prompt_id ascending. So an
  eligible prompt's rank does not depend on how many zero-gradient prompts the pool holds.
"""

from __future__ import annotations

import zlib

import numpy as np


def sample_val_indices(num_eligible: int, max_val_grads: int, seed: int, set_name: str) -> np.ndarray:
    """Indices (ascending) of the validation prompts that form a target: all of them if there
    are at most `max_val_grads`, else a seeded draw without replacement."""
    if num_eligible <= max_val_grads:
        return np.arange(num_eligible)
    rng = np.random.default_rng([seed, zlib.crc32(set_name.encode())])
    return np.sort(rng.choice(num_eligible, size=max_val_grads, replace=False))


def val_target_prompts(prompt_ids: np.ndarray, eligible: np.ndarray, max_val_grads: int, seed: int,
                       set_name: str) -> np.ndarray:
    """The prompt ids (ascending) that form a validation set's target: the eligible ones among
    `prompt_ids`, all of them if at most `max_val_grads`, else a seeded draw (module docstring)."""
    ids = np.asarray(prompt_ids, np.int64)
    order = np.argsort(ids, kind="stable")
    live = ids[order][np.asarray(eligible, dtype=bool)[order]]
    return live[sample_val_indices(len(live), max_val_grads, seed, set_name)]


def val_target(prompt_ids: np.ndarray, grads: np.ndarray, zero_grad: np.ndarray, max_val_grads: int, seed: int,
               set_name: str) -> tuple[np.ndarray, np.ndarray]:
    """v_j = mean of the chosen non-zero validation gradients, float64 [k]; and the chosen prompt
    ids. grads [M, k] row i belongs to prompt_ids[i]. Returns (zeros, []) when no prompt has a
    non-zero gradient; the caller decides that is an error."""
    g = np.asarray(grads)
    keep = ~np.asarray(zero_grad, dtype=bool) & np.any(g != 0, axis=1)  # [M]
    chosen = val_target_prompts(prompt_ids, keep, max_val_grads, seed, set_name)
    if len(chosen) == 0:
        return np.zeros(g.shape[1], np.float64), chosen
    rows = np.isin(np.asarray(prompt_ids, np.int64), chosen)
    return g[rows].astype(np.float64).mean(axis=0), chosen  # [k]


def cosine_from_dots(dots: np.ndarray, norms: np.ndarray, zero_grad: np.ndarray,
                     target_norms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos = dot / (||g|| * ||v_j||) for a batch: dots [B, S], norms [B], zero_grad [B],
    target_norms [S] (all > 0). Returns (scores [B, S] float64, eligible [B] bool); an
    ineligible row scores 0.0. This is the whole of scoring in `exact` mode."""
    norms = np.asarray(norms, np.float64)
    eligible = ~np.asarray(zero_grad, dtype=bool) & (norms != 0)  # [B]; a NaN norm stays eligible, to be caught
    denom = np.where(eligible, norms, 1.0)[:, None] * np.asarray(target_norms, np.float64)[None, :]  # [B, S]
    with np.errstate(invalid="ignore", over="ignore"):  # a non-finite input stays visible as a NaN/inf score
        scores = np.where(eligible[:, None], np.asarray(dots, np.float64) / denom, 0.0)  # [B, S]
    return scores, eligible


def projected_scores(grads: np.ndarray, zero_grad: np.ndarray,
                     targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine of each projected training gradient with each target: grads [B, k] (any float
    dtype), targets [S, k] float64. Returns (scores [B, S], eligible [B])."""
    g = np.asarray(grads)
    if g.dtype != np.float64:
        g = g.astype(np.float32, copy=False).astype(np.float64)  # fp16 -> f32 is exact and fast
    # einsum, not `g @ targets.T`: BLAS picks kernels by batch shape, so a row's dot could change
    # in the last bit with the batch it is read in; einsum's per-row loop gives the same bits for
    # any batching (streamed == in-memory exactly), at about 2x the cost of a fast matmul.
    norms = np.sqrt(np.einsum("ij,ij->i", g, g))  # [B]
    dots = np.einsum("ij,sj->is", g, np.asarray(targets, np.float64))  # [B, S]
    target_norms = np.linalg.norm(targets, axis=1)  # [S]
    return cosine_from_dots(dots, norms, zero_grad, target_norms)


def ranks(scores: np.ndarray, eligible: np.ndarray, prompt_ids: np.ndarray) -> np.ndarray:
    """1-based ordinal ranks of one set's scores [N] -> int64 [N]; see the module docstring
    for the order (eligible by score desc, ties by prompt_id asc; ineligible last)."""
    scores = np.asarray(scores, np.float64)
    # np.lexsort sorts by the last key first: ineligible flag, then -score, then prompt_id.
    order = np.lexsort((np.asarray(prompt_ids), -scores, ~np.asarray(eligible, dtype=bool)))
    out = np.empty(len(scores), np.int64)
    out[order] = np.arange(1, len(scores) + 1)
    return out
