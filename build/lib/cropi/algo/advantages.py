"""Group-normalised advantages (GRPO).

For a group of G rollouts of one prompt with rewards r_1..r_G:
    A_i = (r_i - mean(r)) / (scale + eps)
scale is the group's std ('group', GRPO and the CROPI buffer), the whole batch's std ('batch'),
or nothing ('none', Dr. GRPO: A = r - mean, no eps). std is the population std (divide by G), so a group of equal rewards
has A = 0 exactly, whatever the scale.
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, norm: str = "group", eps: float = 1e-6):
    """rewards [P, G] -> (advantages [P, G], group mean [P], group std [P])."""
    mean = rewards.mean(dim=1)  # [P]
    std = rewards.std(dim=1, unbiased=False)  # [P]
    centred = rewards - mean[:, None]  # [P, G]
    if norm == "group":
        scale = std[:, None]
    elif norm == "batch":
        scale = rewards.std(unbiased=False).expand_as(centred)
    elif norm == "none":
        return centred, mean, std
    else:
        raise ValueError(f"unknown advantage norm {norm!r}; choose group, batch or none")
    return centred / (scale + eps), mean, std
