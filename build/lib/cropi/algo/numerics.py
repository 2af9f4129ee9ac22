"""Where NaN or inf first appears in a GRPO step (pure tensors; no engines).

`nonfinite_rows` names the rows (trajectories) whose response positions hold a non-finite value;
the trainer checks the behavior, reference and current log-probs, the per-token loss and the
advantages of every micro-batch with it, reports the prompt ids and the step, and does not apply
the step (cropi.trainer.step).
"""

from __future__ import annotations

import torch


def nonfinite_rows(x: torch.Tensor, mask: torch.Tensor | None = None) -> list[int]:
    """Rows i of x [n, ...] with a NaN or inf where mask [n, ...] (if given) is true."""
    bad = ~torch.isfinite(x.detach())
    if mask is not None:
        bad = bad & mask.bool()
    return torch.nonzero(bad.reshape(bad.shape[0], -1).any(1)).flatten().tolist()


def first_nonfinite(named: list[tuple[str, torch.Tensor]], mask: torch.Tensor | None = None) -> tuple[str, list[int]] | None:
    """(name, rows) of the first tensor in `named` (in the order values are computed) holding a
    non-finite value at a masked position; None when all are finite."""
    for name, x in named:
        m = mask if (mask is not None and x.dim() == mask.dim()) else None
        rows = nonfinite_rows(x, m)
        if rows:
            return name, rows
    return None
