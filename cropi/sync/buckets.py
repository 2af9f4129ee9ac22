"""Bucket layout of a weight sync: consecutive tensors packed into flat buffers of at most
`bucket_bytes` (a tensor larger alone gets a bucket of its own). Pure: names, shapes, dtypes.

Sender and receivers derive nothing themselves: rank 0 computes the layout from its module and
publishes it, so both sides agree on every offset by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Entry:
    name: str
    shape: tuple[int, ...]
    offset: int  # elements into the bucket's flat buffer

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Bucket:
    dtype: str  # torch dtype name, e.g. "bfloat16"
    numel: int
    entries: tuple[Entry, ...]

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.torch_dtype).element_size()


def layout_buckets(tensors: list[tuple[str, tuple[int, ...], torch.dtype]], bucket_bytes: int) -> list[Bucket]:
    """Group (name, shape, dtype) in order into buckets of one dtype and at most bucket_bytes."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    buckets: list[Bucket] = []
    cur: list[Entry] = []
    cur_dtype, cur_numel = None, 0

    def close():
        nonlocal cur, cur_numel
        if cur:
            buckets.append(Bucket(str(cur_dtype).removeprefix("torch."), cur_numel, tuple(cur)))
        cur, cur_numel = [], 0

    for name, shape, dtype in tensors:
        n = math.prod(shape)
        size = torch.empty((), dtype=dtype).element_size()
        if cur and (dtype != cur_dtype or (cur_numel + n) * size > bucket_bytes):
            close()
        cur_dtype = dtype
        cur.append(Entry(name, tuple(int(s) for s in shape), cur_numel))
        cur_numel += n
    close()
    return buckets


_DTYPES = ("float32", "float16", "bfloat16", "float64")


def buckets_to_json(layout: list[Bucket]) -> str:
    """The layout as the text rank 0 publishes in the sync group's store (JSON, never pickle: the
    store is a TCP port another process could write to)."""
    import json

    return json.dumps([{"dtype": b.dtype, "numel": b.numel, "entries": [[e.name, list(e.shape), e.offset]
                                                                        for e in b.entries]} for b in layout])


def buckets_from_json(text: str | bytes) -> list[Bucket]:
    """The published layout, checked: known dtypes, and each bucket's entries tiling its buffer in order."""
    import json

    try:
        raw = json.loads(text)
        layout = [Bucket(str(b["dtype"]), int(b["numel"]),
                       tuple(Entry(str(n), tuple(int(x) for x in shape), int(off)) for n, shape, off in b["entries"]))
                for b in raw]
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"weight sync layout is not a valid bucket layout: {e}") from None
    for i, b in enumerate(layout):
        if b.dtype not in _DTYPES:
            raise ValueError(f"weight sync layout: bucket {i} has dtype {b.dtype!r}, not one of {_DTYPES}")
        at = 0
        for e in b.entries:
            if e.offset != at or any(x < 0 for x in e.shape):
                raise ValueError(f"weight sync layout: bucket {i} entry {e.name!r} does not follow its predecessor")
            at += e.numel
        if at != b.numel:
            raise ValueError(f"weight sync layout: bucket {i} holds {at} elements, says {b.numel}")
    return layout


def flatten(bucket: Bucket, tensors: dict[str, torch.Tensor], device: str | torch.device = "cpu") -> torch.Tensor:
    """The bucket's tensors copied into one new flat buffer on `device`."""
    buf = torch.empty(bucket.numel, dtype=bucket.torch_dtype, device=device)
    for e in bucket.entries:
        buf[e.offset:e.offset + e.numel].copy_(tensors[e.name].reshape(-1))
    return buf


def unflatten(bucket: Bucket, buf: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """(name, view into buf) for every entry: no copy."""
    return [(e.name, buf[e.offset:e.offset + e.numel].view(e.shape)) for e in bucket.entries]
