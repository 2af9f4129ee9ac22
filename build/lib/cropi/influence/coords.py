"""Sparse coordinate sampling: which entries of each chosen weight enter the influence vector.

CROPI step 3 keeps a fixed random subset of gradient coordinates (ratio p) before projecting;
the same subset for every prompt, split (train/validation) and phase. For a weight with n
entries (flattened row-major, index = row * in_features + col) we keep ceil(n * p) of them:
the index range is cut into chunks of 2^20 and chunk c keeps exactly
ceil(end_c * p) - ceil(start_c * p) indices drawn by `torch.randperm` from a CPU generator
seeded with layer_seed + c, where layer_seed = seed + (first 4 bytes of sha256(layer name)).
Stratified this way the subset is reproducible in any process, costs memory per chunk only,
and comes out sorted. p = 1.0 keeps every index.

The flattened sampled vector concatenates layers in the dict's order (named_modules order
from `sample_coordinates`); `offsets` gives each layer's slice of it.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn

from cropi.errors import CropiError
from cropi.influence.params import chosen_linears

CHUNK = 1 << 20


def layer_seed(seed: int, name: str) -> int:
    """seed + a stable 32-bit offset from the layer name (not Python's salted hash())."""
    return int(seed) + int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def sample_indices(numel: int, ratio: float, seed: int) -> torch.Tensor:
    """Sorted flat indices: ceil(numel * ratio) of range(numel), stratified over 2^20-chunks. -> [S]"""
    if not 0 < ratio <= 1:
        raise CropiError(f"coordinate sample ratio must be in (0, 1], got {ratio}")
    parts = []
    for c, start in enumerate(range(0, numel, CHUNK)):
        end = min(start + CHUNK, numel)
        keep = math.ceil(end * ratio) - math.ceil(start * ratio)
        if keep >= end - start:
            parts.append(torch.arange(start, end))
        elif keep > 0:
            g = torch.Generator().manual_seed(seed + c)
            parts.append(torch.randperm(end - start, generator=g)[:keep].sort().values + start)
    return torch.cat(parts)


def sample_coordinates(model: nn.Module, params: str, ratio: float, seed: int) -> dict[str, torch.Tensor]:
    """Layer name -> sorted LongTensor of sampled flat indices into that layer's weight (CPU)."""
    return {name: sample_indices(m.weight.numel(), ratio, layer_seed(seed, name))
            for name, m in chosen_linears(model, params).items()}


def offsets(coords: dict[str, torch.Tensor]) -> dict[str, tuple[int, int]]:
    """Layer name -> (start, length) of its slice in the flattened sampled vector."""
    out, start = {}, 0
    for name, idx in coords.items():
        out[name] = (start, idx.numel())
        start += idx.numel()
    return out


def total_dim(coords: dict[str, torch.Tensor]) -> int:
    return sum(idx.numel() for idx in coords.values())


def flatten(per_layer: dict[str, torch.Tensor], coords: dict[str, torch.Tensor]) -> torch.Tensor:
    """Concatenate per-layer [..., S_l] tensors in the coordinate order. -> [..., D]"""
    missing = [n for n in coords if n not in per_layer]
    if missing:
        raise CropiError(f"per-layer tensors are missing layers {missing[:5]}")
    return torch.cat([per_layer[n] for n in coords], dim=-1)
