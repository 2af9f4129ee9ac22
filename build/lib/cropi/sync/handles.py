"""Shared-memory handles of a bucket buffer, as JSON: how `trainer.sync: ipc` hands a colocated
engine the trainer rank's buffer without copying it through a socket.

    handle = export_buffer(buf)                  # trainer rank: JSON-able dict naming buf's memory
    buf2 = import_buffer(handle, numel, dtype)   # engine, another process: the same memory

On a GPU the handle is a CUDA IPC handle of buf's allocation (the trainer rank and its engine
see the same physical GPU, each as its own cuda:N, so the device index is the receiver's and the
GPU is checked by UUID); on the CPU it is a POSIX shared-memory file (torch's file_system
sharing), which is how the same protocol runs, and is tested, on machines without a GPU.

Only ints, strings and base64 text travel: never a pickle, so a handle read from the sync
group's store (a TCP port) cannot run code in the engine. The exporter must keep buf alive
until the importer has opened it (cropi.sync.sender waits for that acknowledgement); on CUDA,
torch's IPC reference counter then keeps the allocation until the importer drops its view.
The CUDA calls here are GPU-only and listed in cropi.stack.
"""

from __future__ import annotations

import base64

import torch


def _b64(x: bytes | None) -> str | None:
    return None if x is None else base64.b64encode(x).decode()


def _unb64(x: str | None) -> bytes | None:
    return None if x is None else base64.b64decode(x)


def gpu_uuid(device: torch.device | str) -> str:
    return str(torch.cuda.get_device_properties(torch.device(device)).uuid)


def export_buffer(buf: torch.Tensor) -> dict:
    """A handle of the memory of the flat, contiguous buffer `buf` (CPU or CUDA)."""
    if buf.storage_offset() != 0 or not buf.is_contiguous():
        raise ValueError("export_buffer takes a whole contiguous buffer")
    storage = buf.untyped_storage()
    if buf.is_cuda:
        torch.cuda.current_stream(buf.device).synchronize()  # the flatten copies land before the peer reads
        (_, handle, size, offset, ref_handle, ref_offset, event_handle, event_sync) = storage._share_cuda_()
        return {"kind": "cuda", "uuid": gpu_uuid(buf.device), "handle": _b64(handle), "size": int(size),
                "offset": int(offset), "ref_handle": _b64(ref_handle), "ref_offset": int(ref_offset),
                "event_handle": _b64(event_handle), "event_sync": bool(event_sync)}
    manager, name, size = storage._share_filename_cpu_()  # moves buf into a shared-memory file
    return {"kind": "cpu", "manager": _b64(manager), "name": _b64(name), "size": int(size)}


def import_buffer(h: dict, numel: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """The flat [numel] buffer a handle names, mapped into this process (no copy)."""
    device = torch.device(device)
    if h.get("kind") == "cuda":
        if device.type != "cuda":
            raise ValueError("a CUDA IPC handle needs a CUDA receiver")
        mine = gpu_uuid(device)
        if h["uuid"] != mine:
            raise ValueError(f"the buffer is on GPU {h['uuid']} and this engine on GPU {mine}: ipc needs the trainer "
                             "rank and its engine on one GPU (resources.placement shared)")
        storage = torch.UntypedStorage._new_shared_cuda(
            device.index if device.index is not None else torch.cuda.current_device(), _unb64(h["handle"]), h["size"],
            h["offset"], _unb64(h["ref_handle"]), h["ref_offset"], _unb64(h["event_handle"]), h["event_sync"])
    elif h.get("kind") == "cpu":
        storage = torch.UntypedStorage._new_shared_filename_cpu(_unb64(h["manager"]), _unb64(h["name"]), int(h["size"]))
    else:
        raise ValueError(f"unknown buffer handle kind {h.get('kind')!r}")
    need = numel * torch.empty((), dtype=dtype).element_size()
    if storage.nbytes() < need:
        raise ValueError(f"the shared buffer holds {storage.nbytes()} bytes, the bucket needs {need}")
    return torch.empty(0, dtype=dtype, device=storage.device).set_(storage, 0, (numel,), (1,))
