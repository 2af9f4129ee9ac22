"""The learning rate at each GRPO step: linear warmup, then constant or cosine decay (verl's
actor.optim lr_warmup_steps, lr_scheduler_type and min_lr_ratio).

The schedule runs over the whole run's steps (phase M's step s is global step M*E + s, from 1)
and is a pure function of that step, so a phase resumed from a DeepSpeed checkpoint, or a new
optimizer at the start of each phase, sets exactly the rate an uninterrupted run would.
"""

from __future__ import annotations

import math


def lr_at(step: int, base_lr: float, total_steps: int, warmup_steps: int = 0, schedule: str = "constant",
          min_lr_ratio: float = 0.0) -> float:
    """The rate of global step `step` (1-based) of `total_steps`."""
    if step < 1:
        raise ValueError(f"steps count from 1, got {step}")
    if warmup_steps > 0 and step <= warmup_steps:
        return base_lr * step / warmup_steps
    if schedule == "constant":
        return base_lr
    if schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r}")
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    floor = base_lr * min_lr_ratio
    return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
