"""`SyncChannel`: the weight-sync group of the trainer ranks that send and the vLLM workers that
receive, set up once for the life of the engines and the trainer group.

    broadcast (backend gloo | nccl)  rank 0 is trainer rank 0, ranks 1..P every vLLM worker; a torch
                                     ProcessGroupGloo (CPU) or ProcessGroupNCCL (GPU) carries the buckets
    ipc (backend store)              ranks 0..n-1 are trainer ranks 0..n-1, rank n+i is engine i, each
                                     engine paired with the rank colocated with it; bucket handles
                                     (cropi.sync.handles) travel as JSON through the store, no process group

Built without a default process group, so it lives beside the trainer's own DeepSpeed group and
vLLM's groups without touching them: rank 0 hosts a TCPStore, every peer connects to it, and the
process group, if any, is constructed on that store directly.

No collective may hang: rank 0 waits for each peer's key in the store (`joined`, `ready`,
`done`) with a deadline and, when one is missing, raises a CropiError naming exactly the peers
that did not answer; every broadcast waits with the same timeout.
"""

from __future__ import annotations

import time
from datetime import timedelta

import torch

from cropi.errors import CropiError, WorkerDied


class SyncTimeout(WorkerDied):
    """A peer of the weight-sync group did not answer within the timeout: a dead or hung engine or
    rank, so the loop redoes the training stage with new ones like any other dead worker."""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class SyncChannel:
    def __init__(self, host: str, port: int, rank: int, world: int, timeout_s: float, backend: str = "gloo",
                 peer_names: list[str] | None = None, device: str = "cpu", partners: list[int] | None = None):
        """rank 0 creates the store (and must be given peer_names: what to call rank r in errors);
        rank r > 0 connects to it. Rank 0 blocks until every rank has joined, or raises naming the
        missing. `partners`: the ranks whose answers this rank waits for (default: rank 0 waits for
        every other rank, as a broadcast root does)."""
        import torch.distributed as dist

        self.rank, self.world, self.timeout_s, self.device = rank, world, float(timeout_s), device
        self.backend = backend
        self.peer_names = peer_names or [f"sync rank {r}" for r in range(world)]
        self.partners = list(range(1, world)) if partners is None else list(partners)
        self._timeout = timedelta(seconds=self.timeout_s)
        where = f"weight sync group at {host}:{port}"
        try:
            self.store = dist.TCPStore(host, port, world_size=None, is_master=rank == 0, timeout=self._timeout,
                                       wait_for_workers=False)
        except Exception as e:  # a peer whose rank 0 never came up
            raise SyncTimeout(f"{where}: rank {rank} could not reach rank 0 (trainer rank 0) within "
                              f"{self.timeout_s:.0f} s: {e}") from None
        self.store.set(f"joined/{rank}", "1")
        if rank == 0:
            self.wait_for("joined", "join the weight sync group", list(range(1, world)))
        if backend == "gloo":
            self.pg = dist.ProcessGroupGloo(dist.PrefixStore("pg", self.store), rank, world, self._timeout)
        elif backend == "nccl":  # GPU path (cropi.stack lists it): not run on the CPU-only CI machines
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = self._timeout
            self.pg = dist.ProcessGroupNCCL(dist.PrefixStore("pg", self.store), rank, world, opts)
        elif backend == "store":  # ipc: handles go through the store, the data never leaves the GPU
            self.pg = None
        else:
            raise CropiError(f"weight sync backend must be gloo, nccl or store, got {backend!r}")

    # -- the store: small control messages, and who has answered ------------------------------
    def missing(self, key: str, ranks: list[int] | None = None) -> list[int]:
        ranks = list(range(1, self.world)) if ranks is None else ranks
        return [r for r in ranks if not self.store.check([f"{key}/{r}"])]

    def wait_for(self, key: str, what: str, ranks: list[int] | None = None) -> None:
        """Wait until every rank r of `ranks` (default: this rank's partners) has set key/r, or
        raise naming those that did not."""
        ranks = self.partners if ranks is None else ranks
        deadline = time.monotonic() + self.timeout_s
        while missing := self.missing(key, ranks):
            if time.monotonic() > deadline:
                names = ", ".join(self.peer_names[r] for r in missing)
                raise SyncTimeout(f"weight sync: {names} did not {what} within {self.timeout_s:.0f} s "
                                  f"(trainer.sync_timeout_s); {len(ranks) - len(missing)} of "
                                  f"{len(ranks)} peers did. Is the engine alive and idle?")
            time.sleep(0.02)

    def mark(self, key: str) -> None:
        self.store.set(f"{key}/{self.rank}", "1")

    def publish(self, key: str, text: str) -> None:
        """A control message (text, e.g. JSON; never a pickle, which would run code on the receiver)."""
        self.store.set(key, text)

    def fetch(self, key: str, sender: str = "trainer rank 0") -> str:
        try:
            return self.store.get(key).decode()  # blocks up to the store's timeout
        except Exception as e:
            raise SyncTimeout(f"weight sync: {self.peer_names[self.rank]} got no {key!r} from {sender} "
                              f"within {self.timeout_s:.0f} s: {e}") from None

    def forget(self, key: str) -> None:
        """Drop a control message once read (ipc: one per bucket per sync)."""
        self.store.delete_key(key)

    # -- the data: one broadcast per bucket -----------------------------------------------------
    def broadcast(self, buf: torch.Tensor, what: str) -> None:
        """buf from rank 0 to every rank, in place; raises (never hangs) after the timeout."""
        self.wait(self.start_broadcast(buf), what)

    def start_broadcast(self, buf: torch.Tensor):
        """Post the broadcast of buf and return at once (the backend moves it on its own thread);
        `wait` on the handle before touching buf. One bucket can travel while the next is prepared."""
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank, opts.rootTensor, opts.timeout = 0, 0, self._timeout
        return self.pg.broadcast([buf], opts)

    def wait(self, work, what: str) -> None:
        try:
            work.wait(self._timeout)
        except Exception as e:
            who = "trainer rank 0" if self.rank else "a peer (see which engine the driver names)"
            raise SyncTimeout(f"weight sync: broadcast of {what} failed at {self.peer_names[self.rank]} "
                              f"within {self.timeout_s:.0f} s; {who} stopped answering: {e}") from None

    def close(self) -> None:
        self.pg = None
        self.store = None
