"""Placement groups built from the config: bundles for split and shared arrangements."""

import pytest
import ray

from cropi.config import load_config
from cropi.errors import CropiError
from cropi.placement import training_placement, workers_placement


@pytest.fixture(scope="module")
def ray4():
    ray.init(num_cpus=4, num_gpus=0, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


def test_split_and_shared_bundles(ray4):
    cfg = load_config("configs/tiny-cpu.yaml", ["resources.placement=split", "trainer.world_size=2",
                                                "resources.trainer.num_cpus=0.5", "resources.rollout.num_workers=2",
                                                "resources.rollout.num_cpus=1"])
    place, ranks, workers = training_placement(cfg)
    # split: 2 rank bundles of 0.5 CPU, then 2 worker bundles of 1 CPU
    assert place.bundles == [{"CPU": 0.5}, {"CPU": 0.5}, {"CPU": 1.0}, {"CPU": 1.0}]
    assert ranks == [0, 1] and workers == [2, 3]
    place.remove()
    cfg.resources.placement = "shared"
    cfg.resources.rollout.num_workers = 1
    place, ranks, workers = training_placement(cfg)
    # shared: rank 0 and worker 0 share bundle 0 (0.5 + 1 CPU), rank 1 alone in bundle 1
    assert place.bundles == [{"CPU": 1.5}, {"CPU": 0.5}] and ranks == [0, 1] and workers == [0]

    @ray.remote(num_cpus=0.5)
    def where():
        return ray.get_runtime_context().get_placement_group_id()

    assert ray.get(where.options(scheduling_strategy=place.strategy(0)).remote()) == place.group.id.hex()
    place.remove()


def test_impossible_request_is_a_clear_error(ray4):
    with pytest.raises(CropiError, match="cannot provide 2 bundles .*GPU"):
        import cropi.placement as pl

        pl.reserve([{"CPU": 1.0, "GPU": 1.0}] * 2, "test stage", timeout_s=2)
    with pytest.raises(CropiError, match="influence"):
        workers_placement(8, 1.0, 0.0, "influence", timeout_s=2)


def test_local_ray_declares_room_for_the_kept_alive_training_placement(monkeypatch):
    import os

    from cropi.placement import local_cpus, training_cpus
    from cropi.rollout.engine import sleeps

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    cfg = load_config("configs/tiny-cpu.yaml")  # 2 ranks x 0.5 + 1 engine x 1 shared; 2 gradient actors x 1
    assert training_cpus(cfg) == 2.0
    assert local_cpus(cfg) == 4  # training bundles held while the gradient actors run
    assert local_cpus(load_config("configs/tiny-cpu.yaml", ["trainer.keep_alive=false"])) == 2
    assert local_cpus(load_config("configs/tiny-cpu.yaml", ["resources.local_num_cpus=3"])) == 3
    split = load_config("configs/tiny-cpu.yaml", ["resources.placement=split", "resources.rollout.num_workers=3"])
    assert training_cpus(split) == 2 * 0.5 + 3 * 1.0 and local_cpus(split) == 7  # + max(2 actors, 3 writers)
    assert not sleeps(cfg)  # sleep mode is a GPU colocation feature
    gpu = load_config("configs/tiny-cpu.yaml", ["resources.device=cuda", "resources.rollout.num_gpus=0.5",
                                                "resources.trainer.num_gpus=0.5", "resources.influence.num_gpus=1"])
    assert sleeps(gpu) and not sleeps(load_config("configs/tiny-cpu.yaml", [
        "resources.device=cuda", "resources.placement=split", "resources.rollout.num_gpus=1",
        "resources.trainer.num_gpus=1", "resources.influence.num_gpus=1"]))
