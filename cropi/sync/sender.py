"""Trainer side of a broadcast weight sync: stream a DeepSpeed engine's parameters bucket by bucket.

Every trainer rank calls `send_weights` (under ZeRO-3 each bucket's parameters are gathered by a
collective of all ranks, one bucket at a time, and released before the next); only rank 0 holds
a channel and broadcasts, each bucket while the next is gathered and flattened. Below ZeRO-3 rank 0 already has every parameter whole and the other
ranks return at once. No rank ever holds more than the model it trains plus one bucket.
"""

from __future__ import annotations

import time

import torch

from cropi.sync.buckets import Bucket, flatten, plan_buckets
from cropi.trainer.export import gathered


def named_params(module) -> dict[str, torch.nn.Parameter]:
    """Each parameter once, by its first name (a tied lm_head is the embedding: sent once)."""
    return dict(module.named_parameters())


def full_shape(p: torch.nn.Parameter) -> tuple[int, ...]:
    """The unpartitioned shape (ZeRO-3 keeps it as ds_shape; the local tensor is a shard)."""
    return tuple(getattr(p, "ds_shape", p.shape))


def sync_plan(module, bucket_bytes: int) -> list[Bucket]:
    return plan_buckets([(n, full_shape(p), p.dtype) for n, p in named_params(module).items()], bucket_bytes)


def send_weights(module, zero_stage: int, plan: list[Bucket], channel, sync_id: int, device: str = "cpu") -> dict:
    """One sync: rank 0 (channel given) waits for every receiver to be ready, broadcasts each bucket,
    and waits for every receiver to confirm it loaded them. -> timings and sizes (rank 0)."""
    if channel is None and zero_stage != 3:
        return {}
    params = named_params(module)
    t0 = time.perf_counter()
    if channel is not None:
        channel.wait_for(f"ready/{sync_id}", f"get ready for weight sync {sync_id}")
    t_ready = time.perf_counter() - t0
    nbytes, in_flight = 0, None  # (work, buffer, what) of the bucket on the wire
    for i, b in enumerate(plan):
        ps = [params[e.name] for e in b.entries]
        with gathered(ps, zero_stage), torch.no_grad():
            if channel is not None:
                buf = flatten(b, {e.name: params[e.name].data for e in b.entries}, device)
        # the gathered parameters are released here; buf holds the bucket while it travels and the
        # next bucket is gathered and flattened: at most two buckets exist at once
        if channel is not None:
            if in_flight is not None:
                channel.wait(in_flight[0], in_flight[2])
            what = f"bucket {i + 1}/{len(plan)} ({b.nbytes / 2**20:.1f} MiB) of sync {sync_id}"
            in_flight = (channel.start_broadcast(buf), buf, what)
            nbytes += b.nbytes
            del buf
    if in_flight is not None:
        channel.wait(in_flight[0], in_flight[2])
    if channel is None:
        return {}
    t_sent = time.perf_counter() - t0
    channel.wait_for(f"done/{sync_id}", f"confirm it loaded weight sync {sync_id}")
    return {"ready_seconds": t_ready, "send_seconds": t_sent - t_ready,
            "load_seconds": time.perf_counter() - t0 - t_sent, "bytes": nbytes, "buckets": len(plan)}
