"""Token layouts: which positions of a padded [N, L] batch feed which prompt's gradient.

A layout lists, for each of G groups (prompts), the flat positions n * L + j of its tokens,
padded to the longest group: `idx` [G, T] and `valid` [G, T]. Padding slots repeat the group's
first position and are masked out, so gathering with `idx` never reads garbage.

Two layouts per batch:
- head: positions j-1 for every response token j (the logits that score token j);
- body: positions 0 .. t_last-1 of each row, t_last = its last response position. Activations at
  positions >= t_last influence no scored logit (causal attention), so their output gradients
  are exactly zero and leaving them out changes nothing but the cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Layout:
    idx: torch.Tensor    # [G, T] long, flat positions into [N * L]
    valid: torch.Tensor  # [G, T] bool

    @property
    def num_groups(self) -> int:
        return self.idx.shape[0]


def group_layout(flat: torch.Tensor, group: torch.Tensor, num_groups: int) -> Layout:
    """Group flat positions [T] by group id [T] (stable order within a group)."""
    order = torch.argsort(group, stable=True)
    flat, group = flat[order], group[order]  # [T]
    counts = torch.bincount(group, minlength=num_groups)  # [G]
    starts = torch.cumsum(counts, 0) - counts  # [G]
    slot = torch.arange(flat.numel(), device=flat.device) - starts[group]  # [T]
    width = max(int(counts.max().item()), 1) if flat.numel() else 1
    idx = torch.zeros(num_groups, width, dtype=torch.long, device=flat.device)
    valid = torch.zeros(num_groups, width, dtype=torch.bool, device=flat.device)
    idx[group, slot] = flat
    valid[group, slot] = True
    first = idx[:, :1].expand_as(idx)  # pad with the group's first position
    return Layout(torch.where(valid, idx, first), valid)


def head_layout(target_mask: torch.Tensor, row_group: torch.Tensor, num_groups: int) -> Layout:
    """Positions j-1 of every response token j, grouped. target_mask [N, L], row_group [N]."""
    n, j = torch.nonzero(target_mask, as_tuple=True)
    return group_layout(n * target_mask.shape[1] + j - 1, row_group[n], num_groups)


def body_layout(target_mask: torch.Tensor, row_group: torch.Tensor, num_groups: int) -> Layout:
    """Positions 0 .. t_last-1 of every row, grouped."""
    length = target_mask.shape[1]
    pos = torch.arange(length, device=target_mask.device)  # [L]
    t_last = torch.where(target_mask, pos, torch.zeros_like(pos)).amax(1)  # [N]
    n, j = torch.nonzero(pos[None, :] < t_last[:, None], as_tuple=True)
    return group_layout(n * length + j, row_group[n], num_groups)
