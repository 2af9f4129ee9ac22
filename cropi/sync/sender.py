"""Trainer side of a broadcast weight sync: stream a DeepSpeed engine's parameters bucket by bucket.

Every trainer rank calls `send_weights` (under ZeRO-3 each bucket's parameters are gathered by a
collective of all ranks, one bucket at a time, and released before the next). The ranks that hold
a channel send, each bucket while the next is gathered and flattened: with broadcast only rank 0
(to every engine worker); with ipc each rank that has an engine beside it (its buffers' handles,
to that engine). Below ZeRO-3 a sending rank already has every parameter whole and the others
return at once. No rank ever holds more than the model it trains plus two buckets.
"""

from __future__ import annotations

import time

import torch

from cropi.sync.buckets import Bucket, flatten, layout_buckets
from cropi.sync.handles import export_buffer
from cropi.sync.export import gathered


def named_params(module) -> dict[str, torch.nn.Parameter]:
    """Each parameter once, by its first name (a tied lm_head is the embedding: sent once)."""
    return dict(module.named_parameters())


def full_shape(p: torch.nn.Parameter) -> tuple[int, ...]:
    """The unpartitioned shape (ZeRO-3 keeps it as ds_shape; the local tensor is a shard)."""
    return tuple(getattr(p, "ds_shape", p.shape))


def sync_buckets(module, bucket_bytes: int) -> list[Bucket]:
    return layout_buckets([(n, full_shape(p), p.dtype) for n, p in named_params(module).items()], bucket_bytes)


def send_weights(module, zero_stage: int, layout: list[Bucket], channel, sync_id: int, device: str = "cpu") -> dict:
    """One sync. A rank with a channel sends: it waits for its receivers to be ready, sends each
    bucket (broadcast: rank 0 to every engine worker; ipc: this rank's buffers to its colocated
    engine, as shared-memory handles), and waits for them to confirm they loaded it. Under ZeRO-3
    every rank takes part in each bucket's gather. -> timings and sizes (of a sending rank)."""
    if channel is None and zero_stage != 3:
        return {}
    params = named_params(module)
    ipc = channel is not None and channel.backend == "store"
    t0 = time.perf_counter()
    if channel is not None:
        channel.wait_for(f"ready/{sync_id}", f"get ready for weight sync {sync_id}")
    t_ready = time.perf_counter() - t0
    nbytes, in_flight = 0, None  # (handle to wait on, buffer, what) of the bucket on its way
    for i, b in enumerate(layout):
        ps = [params[e.name] for e in b.entries]
        with gathered(ps, zero_stage), torch.no_grad():
            if channel is not None:
                buf = flatten(b, {e.name: params[e.name].data for e in b.entries}, device)
        # the gathered parameters are released here; buf holds the bucket while it travels and the
        # next bucket is gathered and flattened: at most two buckets exist at once
        if channel is not None:
            if in_flight is not None:
                _settle(channel, in_flight)
            what = f"bucket {i + 1}/{len(layout)} ({b.nbytes / 2**20:.1f} MiB) of sync {sync_id}"
            in_flight = (_post_ipc(channel, buf, sync_id, i) if ipc else channel.start_broadcast(buf), buf, what)
            nbytes += b.nbytes
            del buf
    if in_flight is not None:
        _settle(channel, in_flight)
    if channel is None:
        return {}
    t_sent = time.perf_counter() - t0
    channel.wait_for(f"done/{sync_id}", f"confirm it loaded weight sync {sync_id}")
    if ipc and device != "cpu":
        torch.cuda.ipc_collect()  # free the exported buffers the engine has released
    return {"ready_seconds": t_ready, "send_seconds": t_sent - t_ready,
            "load_seconds": time.perf_counter() - t0 - t_sent, "bytes": nbytes, "buckets": len(layout)}


def ipc_key(sync_id: int, receiver: int, bucket: int) -> str:
    """Where a sending rank leaves bucket `bucket`'s handle for its engine (store rank `receiver`)."""
    return f"ipc/{sync_id}/{receiver}/{bucket}"


def _post_ipc(channel, buf: torch.Tensor, sync_id: int, bucket: int):
    """Publish buf's handle for this rank's engine; -> what to wait on: the engine opening it."""
    import json

    (receiver,) = channel.partners
    channel.publish(ipc_key(sync_id, receiver, bucket), json.dumps(export_buffer(buf)))
    return ("ipc", receiver, f"opened/{sync_id}/{bucket}")


def _settle(channel, in_flight) -> None:
    """Wait until the bucket in flight has arrived: the broadcast completed, or (ipc) the engine
    mapped the buffer, after which this rank may drop its own reference."""
    handle, _, what = in_flight
    if isinstance(handle, tuple) and handle[0] == "ipc":
        channel.wait_for(handle[2], f"open {what}", [handle[1]])
    else:
        channel.wait(handle, what)
