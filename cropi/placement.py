"""Placement groups from the config's resources: where each stage's actors go.

Each stage reserves its actors' resources at once in one placement group, so a stage either gets
everything it needs or fails with a clear error instead of half-starting:

- buffer: one bundle per rollout worker;
- influence: one bundle per gradient actor;
- training: trainer ranks and the rollout workers that feed them, arranged by
  `resources.placement`:
    split   every rank and every rollout worker has a bundle of its own (their GPUs are disjoint);
    shared  rank i and rollout worker i share bundle i: with fractional GPU requests (e.g.
            resources.trainer.num_gpus 0.5, resources.rollout.num_gpus 0.5) the vLLM engine and
            the DeepSpeed rank sit on the same GPU, as in a colocated ("hybrid") engine.
Stages run one after another and release their group when done (cropi.pool.WorkerPool), so
they reuse the same slots.
"""

from __future__ import annotations

from dataclasses import dataclass

from cropi.errors import CropiError


@dataclass
class Placement:
    group: object  # ray.util.placement_group.PlacementGroup
    bundles: list[dict]

    def strategy(self, bundle: int):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return PlacementGroupSchedulingStrategy(placement_group=self.group, placement_group_bundle_index=bundle)

    def remove(self) -> None:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(self.group)

    def __enter__(self) -> "Placement":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _bundle(cpus: float, gpus: float) -> dict:
    b = {"CPU": float(cpus)}
    if gpus > 0:
        b["GPU"] = float(gpus)
    return b


@dataclass(frozen=True)
class PlacementWait:
    """How a stage waits for its placement group (resources.placement_timeout_s, resources.autoscaling)."""
    timeout_s: float = 120.0
    autoscaling: bool = False


def placement_wait(cfg) -> PlacementWait:
    return PlacementWait(float(cfg.resources.placement_timeout_s), bool(cfg.resources.autoscaling))


def shortfall(bundles: list[dict], nodes: list[dict]) -> str | None:
    """What BUNDLES lack on a cluster of NODES (each node's total resources) even when it is idle:
    a resource whose sum over the bundles exceeds the cluster's, or a bundle that no single node
    can hold. None when the request could fit. Pure: no Ray."""
    keys = sorted({k for b in bundles for k in b})
    for k in keys:
        want, have = sum(b.get(k, 0.0) for b in bundles), sum(n.get(k, 0.0) for n in nodes)
        if want > have + 1e-9:
            n = len(bundles)
            return f"{n} bundle{'s' * (n != 1)} need{'s' * (n == 1)} {want:g} {k} in all and the cluster has {have:g}"
    for b in bundles:
        if not any(all(n.get(k, 0.0) + 1e-9 >= v for k, v in b.items()) for n in nodes):
            largest = {k: max((n.get(k, 0.0) for n in nodes), default=0.0) for k in b}
            return f"a bundle of {b} fits on no node (the largest node has {largest})"
    return None


def reserve(bundles: list[dict], what: str, wait: PlacementWait = PlacementWait(), fields: str = "") -> Placement:
    """A placement group of BUNDLES for stage WHAT. A request larger than the whole cluster is
    refused at once (unless the cluster autoscales); one that could fit waits up to wait.timeout_s
    for other stages to free their bundles, then is refused. FIELDS names the config fields that
    size the request, for the message."""
    import ray
    from ray.util.placement_group import placement_group

    lower = (f"lower {fields}" if fields else "lower the actor counts or resources in the config")
    if not wait.autoscaling:
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        problem = shortfall(bundles, nodes)
        if problem:
            raise CropiError(f"{what}: {problem}, so it can never be placed: {lower}, or add nodes (on a cluster "
                             "that adds them on demand, set resources.autoscaling=true to wait for them)"
                             + lost_nodes_note(ray.nodes()))
    pg = placement_group(bundles, strategy="PACK", name="")
    ready, _ = ray.wait([pg.ready()], timeout=wait.timeout_s)
    if not ready:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(pg)
        total = {k: sum(b.get(k, 0) for b in bundles) for k in ("CPU", "GPU")}
        raise CropiError(f"{what}: the cluster cannot provide {len(bundles)} bundles {bundles} "
                         f"(total {total}) within {wait.timeout_s:.0f} s (resources.placement_timeout_s); available "
                         f"now: {ray.available_resources()}. {lower[0].upper() + lower[1:]} (with trainer.keep_alive "
                         "the training engines and ranks keep their bundles between phases; trainer.keep_alive=false "
                         "frees them)." + lost_nodes_note(ray.nodes()))
    return Placement(pg, bundles)


def lost_nodes_note(nodes: list[dict]) -> str:
    """' Lost nodes: ...' for the nodes of ray.nodes() that are dead (a node lost mid-run leaves
    the stage less than it had), else ''."""
    dead = [n for n in nodes if not n.get("Alive")]
    if not dead:
        return ""
    names = ", ".join(f"{n.get('NodeManagerAddress', '?')} (node {str(n.get('NodeID', '?'))[:8]}, "
                      f"{n.get('Resources', {}).get('CPU', 0):g} CPU, {n.get('Resources', {}).get('GPU', 0):g} GPU)"
                      for n in dead)
    return (f" Lost node{'s' * (len(dead) > 1)}: {names}; rerun the same command when the cluster has its "
            "resources back (finished work is kept).")


def training_bundles(cfg) -> tuple[list[dict], list[int], list[int]]:
    """(bundles, bundle of each trainer rank, bundle of each rollout worker) of the training placement."""
    t, ro = cfg.resources.trainer, cfg.resources.rollout
    w, n = cfg.trainer.world_size, cfg.train_engines()
    if cfg.resources.placement == "split":
        bundles = [_bundle(t.num_cpus, t.num_gpus) for _ in range(w)] + \
                  [_bundle(ro.num_cpus, ro.num_gpus) for _ in range(n)]
        return bundles, list(range(w)), list(range(w, w + n))
    bundles = [_bundle(t.num_cpus * (i < w) + ro.num_cpus * (i < n),
                       t.num_gpus * (i < w) + ro.num_gpus * (i < n)) for i in range(max(w, n))]
    return bundles, list(range(w)), list(range(n))


def training_cpus(cfg) -> float:
    """CPUs the training placement reserves (trainer ranks and their rollout engines)."""
    return sum(b["CPU"] for b in training_bundles(cfg)[0])


def local_cpus(cfg) -> int:
    """What a local Ray head declares: resources.local_num_cpus, or (0) enough for any stage beside
    the kept-alive groups it does not belong to -- the training placement (trainer.keep_alive) and
    the gradient actors (resources.influence.keep_alive) -- and at least this machine's cores."""
    import math
    import os

    r = cfg.resources
    if r.local_num_cpus:
        return r.local_num_cpus
    stages = {"influence": r.influence.num_actors * r.influence.num_cpus, "train": training_cpus(cfg),
              "writers": r.rollout.num_workers * r.rollout.num_cpus, "select": 1.0}
    held = {"train": stages["train"] * cfg.trainer.keep_alive,
            "influence": stages["influence"] * r.influence.keep_alive}
    need = max(c + sum(h for k, h in held.items() if k != name) for name, c in stages.items())
    return max(os.cpu_count() or 1, math.ceil(need))


def workers_placement(count: int, cpus: float, gpus: float, what: str, wait: PlacementWait = PlacementWait(),
                      fields: str = "") -> Placement:
    return reserve([_bundle(cpus, gpus) for _ in range(count)], what, wait, fields)


def training_placement(cfg) -> tuple[Placement, list[int], list[int]]:
    """(placement, bundle of each trainer rank, bundle of each rollout worker)."""
    bundles, ranks, engines = training_bundles(cfg)
    fields = ("trainer.world_size, resources.trainer.num_cpus/num_gpus, resources.rollout.num_train_engines "
              "(else num_workers) and resources.rollout.num_cpus/num_gpus")
    return reserve(bundles, f"training ({cfg.resources.placement})", placement_wait(cfg), fields), ranks, engines
