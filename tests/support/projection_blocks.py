"""Row blocks of the projection matrix R, materialised (for tests and inspection only)."""

from __future__ import annotations

import torch

from cropi.influence.projection import BLOCK_ROWS, _Source


def generate_block(b: int, proj_dim: int, kind: str, seed: int, device="cpu") -> torch.Tensor:
    """Row block b of R as integers (for tests and inspection). -> int8 [BLOCK_ROWS, k]"""
    source = _Source(proj_dim, kind, seed, torch.device(device))
    return torch.cat([p.t().clone() for _, p in source.pieces(b, BLOCK_ROWS)])
