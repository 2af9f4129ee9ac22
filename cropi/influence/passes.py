"""Buffer rows -> per-prompt influence columns, pass by pass under a token budget (no Ray).

The gradient actor is a thin shell over these two functions; the benchmarks call them directly.
`influence` is the config's influence section; `seed` the projection seed (cropi.seeds.projection).
"""

from __future__ import annotations

import numpy as np
import torch

from cropi.influence.trajectories import make_batch, split_passes
from cropi.influence.gradients import prompt_scores, split_prompt_scores, validation_mean_gradient


def passes(rows: list[dict], pad_id: int, max_tokens: int) -> list[tuple]:
    """(batch or [batches], prompt ids, split) per backward pass; the consecutive split passes of
    one prompt come as one item with the list of its part batches."""
    items: list[tuple] = []
    for chunk, group_size in split_passes(rows, max_tokens):
        batch, ids = make_batch(chunk, pad_id, group_size)
        if group_size is not None and items and items[-1][2] and items[-1][1] == ids:
            items[-1][0].append(batch)
        else:
            items.append(([batch] if group_size is not None else batch, ids, group_size is not None))
    return items


def val_gradient(model, coords: dict, pad_id: int, rows: list[dict], influence) -> dict:
    """Mean sampled gradient of the validation prompts in `rows`: {layer: [S_l]} on the CPU."""
    batches = [b for batch, _, split in passes(rows, pad_id, influence.max_tokens_per_backward)
               for b in (batch if split else [batch])]
    v = validation_mean_gradient(model, batches, coords, influence.grad_dtype, influence.logits_chunk_tokens,
                                 num_prompts=len({r["prompt_id"] for r in rows}))
    return {k: t.cpu() for k, t in v.items()}


def score_rows(model, coords: dict, pad_id: int, rows: list[dict], influence, seed: int,
               val_grads: dict | None) -> dict:
    """Per-prompt outputs for buffer rows: numpy arrays keyed by influence-shard column."""
    kw = dict(val_grads=val_grads, proj_dim=influence.proj_dim, proj_kind=influence.proj_kind, seed=seed,
              grad_dtype=influence.grad_dtype, head_chunk_tokens=influence.logits_chunk_tokens)
    cols: dict[str, list] = {}
    for batch, ids, split in passes(rows, pad_id, influence.max_tokens_per_backward):
        fn = split_prompt_scores if split else prompt_scores
        out = fn(model, batch, coords, influence.mode, **kw)
        part = {"prompt_id": np.asarray(ids, np.int64), "zero_grad": out["zero_grad"].numpy(),
                "kl": out["kl"].double().numpy(), "num_tokens": out["num_tokens"].numpy()}
        if influence.mode == "exact":
            part["norm"] = out["norms"].double().numpy()
            for s, d in out["dots"].items():
                part[f"dot__{s}"] = d.double().numpy()
        else:
            part["grad"] = out["projected"].to(torch.float32).numpy()
        for k, v in part.items():
            cols.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in cols.items()}
