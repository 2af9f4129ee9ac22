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


def reserve(bundles: list[dict], what: str, timeout_s: float = 120.0) -> Placement:
    import ray
    from ray.util.placement_group import placement_group

    pg = placement_group(bundles, strategy="PACK", name="")
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(pg)
        total = {k: sum(b.get(k, 0) for b in bundles) for k in ("CPU", "GPU")}
        raise CropiError(f"{what}: the cluster cannot provide {len(bundles)} bundles {bundles} "
                         f"(total {total}) within {timeout_s:.0f} s; available now: {ray.available_resources()}. "
                         "Lower the actor counts or resources in the config (with trainer.keep_alive the training "
                         "engines and ranks keep their bundles between phases; trainer.keep_alive=false frees them).")
    return Placement(pg, bundles)


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
    """What a local Ray head declares: resources.local_num_cpus, or (0) enough for the stages that
    hold bundles at the same time -- the kept-alive training placement beside the gradient actors or
    the refresh writers -- and at least this machine's cores."""
    import math
    import os

    r = cfg.resources
    if r.local_num_cpus:
        return r.local_num_cpus
    others = max(r.influence.num_actors * r.influence.num_cpus, r.rollout.num_workers * r.rollout.num_cpus)
    need = others + training_cpus(cfg) if cfg.trainer.keep_alive else max(others, training_cpus(cfg))
    return max(os.cpu_count() or 1, math.ceil(need))


def workers_placement(count: int, cpus: float, gpus: float, what: str, timeout_s: float = 120.0) -> Placement:
    return reserve([_bundle(cpus, gpus) for _ in range(count)], what, timeout_s)


def training_placement(cfg) -> tuple[Placement, list[int], list[int]]:
    """(placement, bundle of each trainer rank, bundle of each rollout worker)."""
    bundles, ranks, engines = training_bundles(cfg)
    return reserve(bundles, f"training ({cfg.resources.placement})"), ranks, engines
