"""`WorkerPool`: the one lifecycle of a stage's Ray actors.

    with WorkerPool(BufferWriter, lambda i: (cfg, model, i), count=n, cpus=1, gpus=0,
                    what="buffer", name="cropi-rollout-buffer") as pool:
        results = pool.map(lambda w, spec: w.build_shard.remote(spec, out), specs, on_done=bar)

It reserves one placement-group bundle per actor (or takes bundles of a group the caller holds,
as training does for ranks and engines that share bundles), starts the actors, hands out work
one item per idle actor through a `ray.wait` queue, and kills the actors and releases what it
reserved when the block ends, on success or on any exception. A CropiError raised inside an actor
surfaces as itself; an actor that dies becomes a CropiError that names the stage and the item,
and says a rerun resumes (every stage writes its outputs atomically, item by item).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from cropi.errors import CropiError, WorkerDied, WorkerHung
from cropi.placement import Placement, PlacementWait, lost_nodes_note, workers_placement
from cropi.logs import actor_env
from cropi.ray_utils import get

PEER_DEATH_GRACE_S = 30.0  # how long a failed collective call waits to learn whether a peer died


def with_log_env(options: dict | None) -> dict:
    """The actor options with cropi's log settings (cropi.logs) in runtime_env.env_vars; the
    caller's own env_vars win where they name the same variable."""

    options = dict(options or {})
    renv = dict(options.get("runtime_env") or {})
    renv["env_vars"] = {**actor_env(), **(renv.get("env_vars") or {})}
    options["runtime_env"] = renv
    return options


class WorkerPool:
    def __init__(self, actor_cls, args_of: Callable[[int], tuple], *, count: int, cpus: float, gpus: float,
                 what: str, name: str, options: dict | None = None, placement: Placement | None = None,
                 bundles: Sequence[int] | None = None, wait: PlacementWait = PlacementWait(), fields: str = "",
                 on_death: str = "rerun the same command to resume: finished work is kept"):
        self.what, self.on_death = what, on_death
        self.owns_placement = placement is None
        self.placement = workers_placement(count, cpus, gpus, what, wait, fields) if placement is None else placement
        bundles = list(range(count)) if bundles is None else list(bundles)
        if len(bundles) != count:
            raise CropiError(f"{what}: {count} actors need {count} bundles, got {len(bundles)}")
        self.actors: list = []
        self._started_all = False  # every actor known to be constructed
        self.names = [f"{name}-{i}" for i in range(count)]
        options = with_log_env(options)
        try:
            for i, b in enumerate(bundles):
                self.actors.append(actor_cls.options(
                    name=f"{name}-{i}", num_cpus=cpus, num_gpus=gpus,
                    scheduling_strategy=self.placement.strategy(b), **options).remote(*args_of(i)))
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.actors)

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []
        if self.owns_placement and self.placement is not None:
            self.placement.remove()
            self.placement = None

    def _hung(self, stuck: list, timeout_s: float, what: str) -> CropiError:
        """Kill the actors that did not answer (ray.kill also ends a stopped process) and say which."""
        import ray

        names = [self.names[self.actors.index(a)] for a in stuck]
        for a in stuck:
            ray.kill(a, no_restart=True)
        return WorkerHung(f"{self.what}: {', '.join(names)} did not answer {what} within run.hang_timeout_s = "
                          f"{timeout_s:g} s (hung: a stuck collective, a stopped process, or an actor that cannot "
                          f"be placed again) and {'was' if len(names) == 1 else 'were'} killed; " + self.on_death
                          + lost_nodes_note(ray.nodes()))

    def _died(self, e: Exception, item: Any, describe: Callable[[Any], str]) -> CropiError:
        import ray

        return WorkerDied(f"{self.what}: a worker died while working on {describe(item)} ({type(e).__name__}); "
                          + self.on_death + lost_nodes_note(ray.nodes()))

    def _started(self, timeout_s: float) -> None:
        """Wait for the actors not yet known to be constructed (a vLLM engine or a model loading in
        __init__), so that an item's hang clock counts its own work, never an actor's start-up;
        the start-up gets timeout_s of its own."""
        import ray

        if timeout_s <= 0 or self._started_all:
            return
        refs = [a.__ray_ready__.remote() for a in self.actors]
        _, late = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if late:
            raise self._hung([self.actors[refs.index(r)] for r in late], timeout_s, "its start-up")
        try:
            ray.get(refs)
        except ray.exceptions.RayActorError as e:
            raise self._died(e, "its start-up", str) from None
        self._started_all = True

    def map(self, call: Callable[[Any, Any], Any], items: Sequence, on_done: Callable[[Any, Any], None] | None = None,
            describe: Callable[[Any], str] = str, timeout_s: float = 0.0) -> list:
        """call(actor, item) -> ObjectRef for every item, at most one in flight per actor;
        results in item order. on_done(item, result) runs as each finishes. timeout_s > 0: an
        item that takes longer marks its actor hung (killed, WorkerHung)."""
        import time

        import ray

        self._started(timeout_s)
        results: list = [None] * len(items)
        queue = list(range(len(items)))
        idle = list(self.actors)
        pending: dict = {}
        while queue or pending:
            while queue and idle:
                actor, i = idle.pop(), queue.pop(0)
                pending[call(actor, items[i])] = (actor, i, time.monotonic())
            wait = None if timeout_s <= 0 else \
                max(0.0, min(t for *_, t in pending.values()) + timeout_s - time.monotonic())
            done, _ = ray.wait(list(pending), num_returns=1, timeout=wait)
            if not done:
                late = [a for a, i, t in pending.values() if time.monotonic() - t >= timeout_s * 0.999]
                raise self._hung(late, timeout_s, "on " + ", ".join(describe(items[i]) for a, i, _ in pending.values()
                                                                     if a in late))
            actor, i, _ = pending.pop(done[0])
            try:
                results[i] = get(done[0])
            except ray.exceptions.RayActorError as e:
                raise self._died(e, items[i], describe) from None
            if on_done is not None:
                on_done(items[i], results[i])
            idle.append(actor)
        return results

    def each(self, call: Callable[..., Any], items: Sequence | None = None, timeout_s: float = 0.0,
             what: str = "a collective call") -> list:
        """call(actor) -- or call(actor, items[i]) for actor i -- on every actor at once (a
        collective step); results in actor order. timeout_s > 0: the actors that have not
        answered by then are hung (killed, WorkerHung naming them)."""
        import ray

        if items is not None and len(items) != len(self.actors):
            raise CropiError(f"{self.what}: {len(items)} items for {len(self.actors)} actors")
        self._started(timeout_s)
        try:
            refs = [call(a) for a in self.actors] if items is None else [call(a, x) for a, x in zip(self.actors, items)]
            if timeout_s > 0:
                _, late = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
                if late:
                    raise self._hung([self.actors[refs.index(r)] for r in late], timeout_s, what)
        except ray.exceptions.RayActorError as e:
            raise self._died(e, "a collective call", str) from None
        try:
            return get(refs)
        except ray.exceptions.RayActorError as e:
            raise self._died(e, "a collective call", str) from None
        except Exception:  # a peer's death shows first as the survivors' collective error
            dead = self._dead_among(refs, timeout_s)
            if dead is None:
                raise
            raise self._died(dead, "a collective call", str) from None

    def _dead_among(self, refs: list, timeout_s: float, grace_s: float = PEER_DEATH_GRACE_S):
        """After one actor of a collective call failed: the RayActorError of an actor that died,
        if any did, else None. The survivors of a dead rank fail first (gloo: "Connection closed
        by peer", NCCL: a communicator error) while Ray still reports the dead one's task as
        pending; give every call up to grace_s (bounded by the call's timeout) to settle."""
        import ray

        wait = grace_s if timeout_s <= 0 else min(grace_s, timeout_s)
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=wait)
        for ref in ready:
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError as e:
                if isinstance(e, ray.exceptions.ActorUnavailableError):  # alive but not answering: never left holding a GPU
                    ray.kill(self.actors[refs.index(ref)], no_restart=True)
                return e
            except Exception:  # a survivor's own error: not a death
                continue
        return None
