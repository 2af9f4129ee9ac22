"""Receiving side of trainer -> vLLM weight sync: a vLLM worker extension.

vLLM instantiates this mix-in inside each worker (`LLM(worker_extension_cls=...)`) and we call
its methods with `llm.collective_rpc(name, args=...)`. Three ways in:
- broadcast (`trainer.sync: broadcast`): each worker joins the sync group of trainer rank 0
  (cropi.sync.channel) once, then per sync receives the buckets rank 0 broadcasts and feeds them,
  as they arrive, to the worker's in-place reload (the next bucket arrives while one loads): no
  file, no full copy;
- ipc (`trainer.sync: ipc`, colocated): the same stream, but each bucket is the colocated trainer
  rank's own buffer, mapped by a shared-memory handle (CUDA IPC on a GPU: cropi.sync.handles)
  read from the group's store; the rank exports the next bucket once this one is mapped;
- object store (the fallback): tensors cannot travel in collective_rpc's args, so the engine
  actor writes the trainer's safetensors blob to a file (under /dev/shm) and sends its path.
On the CPU backend `model.load_weights` breaks the repacked oneDNN layers; the worker's own
`reload_weights(weights_iterator=...)` reloads and repacks every layer, so we use that.

Each reload logs "RotaryEmbedding: Failed to load weights" (vLLM's layerwise reload, at WARNING).
It is harmless: the rotary layer's only tensor is its cos/sin cache, computed from the config
(rope theta, max positions), never trained and not in a Hugging Face state dict, so no sync sends
it; vLLM then puts the layer's existing cache back (`_place_kernel_tensors`), unchanged. The
weight-sync tests compare the synced engine's log-probs with the trainer's model, which they
would not match were the cache lost. cropi.logs keeps the line out of the job log.
(Do not name a method `update_weights`: it clashes with the worker's own.)

Tied embeddings: a checkpoint (and our sync, which sends each tensor once) has no
`lm_head.weight` when the head is the input embedding, but on the CPU backend the head is
repacked separately and keeps its old values if only the embedding is reloaded (measured on
Qwen2: log-probs 0.02 off). So the worker also loads the embedding under the head's name.
"""

from __future__ import annotations
from cropi.errors import CropiError

HEAD = "lm_head.weight"


def tied_head_source(model, tied: bool) -> str | None:
    """The name of the parameter a tied head shares (the input embedding), or None.
    A tied model's `lm_head` is its embedding module, and named_parameters() names a shared
    parameter once, by its first (embedding) name."""
    head = getattr(model, "lm_head", None)
    if not tied or head is None or not hasattr(head, "weight"):
        return None
    return next((n for n, p in model.named_parameters() if p is head.weight), None)


def with_tied_head(tensors: dict, model, tied: bool) -> dict:
    """tensors plus HEAD = the input embedding's tensor, when the model ties them and HEAD is absent."""
    name = tied_head_source(model, tied)
    if HEAD in tensors or name is None or name not in tensors:
        return tensors
    return {**tensors, HEAD: tensors[name]}


class WeightSyncExtension:
    def _cropi_tied(self) -> bool:
        return bool(getattr(self.vllm_config.model_config.hf_config, "tie_word_embeddings", False))

    def cropi_load_weights_file(self, path: str) -> int:
        """Load every tensor in a safetensors file into the running model; returns the count."""
        from safetensors.torch import load_file

        tensors = load_file(path)
        tensors = with_tied_head(tensors, self.get_model(), self._cropi_tied())
        self.reload_weights(weights_iterator=iter(tensors.items()))
        return len(tensors)

    def cropi_sync_open(self, host: str, port: int, first_rank: int, world: int, timeout_s: float,
                        backend: str, name: str, sender: int = 0, sender_name: str = "trainer rank 0") -> int:
        """Join the sync group as rank first_rank + this worker's rank; -> that rank. `sender` is
        the rank that sends to this worker (broadcast: trainer rank 0; ipc: the colocated rank)."""
        from cropi.sync.channel import SyncChannel

        rank = first_rank + int(getattr(self, "rank", 0))
        names = [f"sync rank {r}" for r in range(world)]
        names[rank] = name if int(getattr(self, "rank", 0)) == 0 else f"{name} worker {self.rank}"
        names[sender] = sender_name
        device = next(self.get_model().parameters()).device
        self._cropi_channel = SyncChannel(host, port, rank, world, timeout_s, backend, names, str(device), [sender])
        self._cropi_sender = sender
        self._cropi_buckets = None
        return rank

    def cropi_sync_receive(self, sync_id: int) -> dict:
        """Receive sync `sync_id` bucket by bucket into the running model; -> tensors loaded and
        seconds spent in all, and receiving (the rest is vLLM's in-place load)."""
        import time

        from cropi.sync.buckets import buckets_from_json, unflatten

        ch = self._cropi_channel
        ch.mark(f"ready/{sync_id}")
        if self._cropi_buckets is None:
            self._cropi_buckets = buckets_from_json(ch.fetch("buckets"))
        plan, head_src = self._cropi_buckets, tied_head_source(self.get_model(), self._cropi_tied())
        arrive = self._cropi_ipc_buckets(sync_id) if ch.backend == "store" else self._cropi_broadcast_buckets(sync_id)
        count, waited, t0 = 0, [0.0], time.perf_counter()

        def stream():
            nonlocal count
            for buf, b in zip(arrive(plan, waited), plan):  # arrive first: it ends (and drops its last buffer) with the plan
                for name, tensor in unflatten(b, buf):
                    count += 1
                    yield name, tensor
                    if name == head_src:
                        yield HEAD, tensor

        self.reload_weights(weights_iterator=stream())
        if ch.device != "cpu":
            import gc

            import torch

            torch.cuda.synchronize()  # the copies out of the trainer's buffers are done before it may free them
            gc.collect()  # and no view of them is left here: the trainer's ipc_collect can reclaim them
        ch.mark(f"done/{sync_id}")
        return {"tensors": count, "seconds": time.perf_counter() - t0, "receive_seconds": waited[0]}

    def _cropi_broadcast_buckets(self, sync_id: int):
        """Buckets as they arrive by broadcast: bucket i+1 is received (on the backend's thread)
        while vLLM loads bucket i."""
        import time

        import torch

        ch = self._cropi_channel

        def arrive(plan, waited):
            def post(i):
                buf = torch.empty(plan[i].numel, dtype=plan[i].torch_dtype, device=ch.device)
                return ch.start_broadcast(buf), buf

            nxt = post(0) if plan else None
            for i in range(len(plan)):
                work, buf = nxt
                t = time.perf_counter()
                ch.wait(work, f"bucket {i + 1}/{len(plan)} of sync {sync_id}")
                waited[0] += time.perf_counter() - t
                nxt = post(i + 1) if i + 1 < len(plan) else None
                yield buf

        return arrive

    def _cropi_ipc_buckets(self, sync_id: int):
        """Buckets as the colocated trainer rank exports them: each handle is read from the store,
        the buffer mapped (no copy) and acknowledged, so the rank may export the next one."""
        import json
        import time

        from cropi.sync.handles import import_buffer
        from cropi.sync.sender import ipc_key

        ch = self._cropi_channel
        sender = ch.peer_names[self._cropi_sender]

        def arrive(plan, waited):
            for i, b in enumerate(plan):
                t = time.perf_counter()
                key = ipc_key(sync_id, ch.rank, i)
                handle = json.loads(ch.fetch(key, sender))
                try:
                    buf = import_buffer(handle, b.numel, b.torch_dtype, ch.device)
                except ValueError as e:
                    raise CropiError(f"weight sync {sync_id}: {ch.peer_names[ch.rank]} cannot map bucket {i + 1} "
                                     f"from {sender}: {e}") from None
                ch.forget(key)
                ch.mark(f"opened/{sync_id}/{i}")
                waited[0] += time.perf_counter() - t
                yield buf

        return arrive
