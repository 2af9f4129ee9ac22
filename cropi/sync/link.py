"""`WeightLink`: the driver's side of trainer -> vLLM weight sync, by any path (config.sync_mode).

    link = WeightLink(cfg, group, engines)   # broadcast: opens the sync group once
    stats = link.push()                      # the trainer's current weights into every engine

broadcast     trainer rank 0 and every vLLM worker form one group (cropi.sync.channel); the
              trainer ranks stream buckets (cropi.sync.sender), the engines load them as they
              arrive (cropi.rollout.weight_sync). Nothing passes through the driver.
ipc           colocated (placement shared): trainer rank i hands engine i, on its own GPU, each
              bucket as a shared-memory handle (CUDA IPC on GPUs); the same streams, no NCCL.
object_store  rank 0 serialises one safetensors blob; it goes through the Ray object store and
              every engine reloads it from a file (the fallback, and the way any Ray cluster works).

All calls of one sync are in flight together and are awaited fail-fast: the first error ends the
sync (an engine or rank that died is named; a peer that stopped answering is named by rank 0's
timeout), never a wait on the others.
"""

from __future__ import annotations

import time

from cropi.errors import CropiError
from cropi.ray_utils import get


def _await(refs: list, names: list[str], what: str, grace_s: float = 3.0) -> list:
    """Results of refs in order; on the first failure, wait up to grace_s for the others to fail
    too and raise the most telling error: a death names its actor, else the first CropiError."""
    import ray

    pending, out, errors = dict(zip(refs, range(len(refs)))), [None] * len(refs), []
    deadline = None
    while pending:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        done, _ = ray.wait(list(pending), num_returns=1, timeout=timeout)
        if not done:
            break
        i = pending.pop(done[0])
        try:
            out[i] = get(done[0])
        except ray.exceptions.RayActorError as e:
            how = "could not start (its creation raised; the error is above and in its log)" \
                if "creation task" in str(e) else "died"
            errors.insert(0, CropiError(f"{what}: {names[i]} {how}"))
        except Exception as e:  # noqa: BLE001 -- re-raised below, the most telling first
            errors.append(e if isinstance(e, CropiError) else CropiError(f"{what}: {names[i]} failed: {e}"))
        if errors and deadline is None:
            deadline = time.monotonic() + grace_s
    if errors:
        raise errors[0]
    return out


class WeightLink:
    def __init__(self, cfg, group, engines):
        t = cfg.trainer
        self.group, self.engines, self.mode = group, engines, cfg.sync_mode()
        self.sync_id = 0
        tp = cfg.resources.rollout.tensor_parallel_size
        self.engine_names = [f"rollout engine {i}" for i in range(len(engines))]
        self.rank_names = [f"trainer rank {r}" for r in range(len(group.ranks))]
        if self.mode == "object_store":
            return
        # the sync timeout starts once every engine is up (starting one can take minutes on a GPU)
        _await([e.ready.remote() for e in engines.actors], self.engine_names, "starting the rollout engines")
        host, port = _await([group.ranks[0].sync_address.remote()], self.rank_names[:1], "weight sync set-up")[0]
        bucket = int(t.sync_bucket_mb * 2**20)
        n = len(engines)
        if self.mode == "ipc":
            # ranks 0..n-1 send, each to the engine beside it, store rank n+i (cropi.sync.channel)
            world, backend = 2 * n, "store"
            peers = self.rank_names[:n] + self.engine_names
            refs = [r.sync_open.remote(host, port, world, t.sync_timeout_s, backend, peers, bucket,
                                       i if i < n else None, [n + i] if i < n else None)
                    for i, r in enumerate(group.ranks)]
            refs += [e.sync_open.remote(host, port, n + i, world, t.sync_timeout_s, backend, self.engine_names[i],
                                        i, self.rank_names[i]) for i, e in enumerate(engines.actors)]
        else:
            world = 1 + n * tp
            peers = ["trainer rank 0"] + [f"{e}" + (f" worker {w}" if w else "") for e in self.engine_names
                                          for w in range(tp)]
            backend = "gloo" if cfg.resources.device == "cpu" else "nccl"
            refs = [r.sync_open.remote(host, port, world, t.sync_timeout_s, backend, peers, bucket,
                                       0 if i == 0 else None) for i, r in enumerate(group.ranks)]
            refs += [e.sync_open.remote(host, port, 1 + i * tp, world, t.sync_timeout_s, backend, self.engine_names[i])
                     for i, e in enumerate(engines.actors)]
        _await(refs, self.rank_names + self.engine_names, "weight sync set-up")

    def push(self) -> dict:
        """The trainer's current weights into every engine; -> rank 0's figures (broadcast)."""
        names = self.rank_names + self.engine_names
        if self.mode == "object_store":
            import ray

            blob = ray.put(self.group.weights())
            _await([e.load_weights.remote(blob) for e in self.engines.actors], self.engine_names, "weight sync")
            return {}
        self.sync_id += 1
        s = self.sync_id
        refs = [r.sync_send.remote(s) for r in self.group.ranks] + [e.sync_receive.remote(s) for e in self.engines.actors]
        out = _await(refs, names, f"weight sync {s}")
        engines = out[len(self.group.ranks):]
        sent = [o for o in out[:len(self.group.ranks)] if o]
        return {**sent[0], "send_seconds_max": max(o["send_seconds"] + o["load_seconds"] for o in sent), "engine_seconds_max": max(e["seconds"] for e in engines),
                "engine_receive_seconds_max": max(e["receive_seconds"] for e in engines)}
