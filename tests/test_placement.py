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


def test_shortfall_names_the_resource_and_the_bundle():
    from cropi.placement import shortfall

    nodes = [{"CPU": 8.0, "GPU": 4.0}, {"CPU": 8.0, "GPU": 4.0}]
    assert shortfall([{"CPU": 2.0, "GPU": 4.0}] * 2, nodes) is None  # one bundle per node
    assert shortfall([{"CPU": 1.0, "GPU": 1.0}] * 9, nodes) == "9 bundles need 9 GPU in all and the cluster has 8"
    assert shortfall([{"CPU": 1.0, "GPU": 5.0}], nodes).startswith("a bundle of {'CPU': 1.0, 'GPU': 5.0} fits on no node")
    assert shortfall([{"CPU": 1.0, "GPU": 1.0}], [{"CPU": 16.0}]) == "1 bundle needs 1 GPU in all and the cluster has 0"


def test_a_request_larger_than_the_cluster_fails_at_once(ray4):
    from cropi.placement import PlacementWait, reserve

    # a wait of 10 minutes is never started: the message is the one given before waiting
    with pytest.raises(CropiError, match=r"test stage: 2 bundles need 2 GPU in all and the cluster has 0, so it "
                                         r"can never be placed: lower resources\.x"):
        reserve([{"CPU": 1.0, "GPU": 1.0}] * 2, "test stage", PlacementWait(timeout_s=600), "resources.x")
    with pytest.raises(CropiError, match=r"influence: 8 bundles need 8 CPU in all and the cluster has 4"):
        workers_placement(8, 1.0, 0.0, "influence", PlacementWait(timeout_s=600))
    # on a cluster that adds nodes on demand the request waits for them, as long as configured
    with pytest.raises(CropiError, match=r"cannot provide 2 bundles .*within 2 s \(resources\.placement_timeout_s\)"):
        reserve([{"CPU": 1.0, "GPU": 1.0}] * 2, "test stage", PlacementWait(timeout_s=2, autoscaling=True))


def test_a_request_that_fits_waits_for_held_bundles_then_fails(ray4):
    from cropi.placement import PlacementWait

    held = workers_placement(4, 1.0, 0.0, "another stage")
    try:
        with pytest.raises(CropiError, match=r"influence: the cluster cannot provide 1 bundles .*within 2 s"):
            workers_placement(1, 1.0, 0.0, "influence", PlacementWait(timeout_s=2))
    finally:
        held.remove()
    workers_placement(1, 1.0, 0.0, "influence", PlacementWait(timeout_s=30)).remove()  # free again: placed


def test_local_ray_declares_room_for_the_kept_alive_training_placement(monkeypatch):
    import os

    from cropi.placement import local_cpus, training_cpus
    from cropi.rollout.engine import sleeps

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    cfg = load_config("configs/tiny-cpu.yaml")  # 2 ranks x 0.5 + 1 engine x 1 shared; 2 gradient actors x 1
    assert training_cpus(cfg) == 2.0
    # a refresh's writer (1) beside the held training bundles (2) and gradient actors (2)
    assert local_cpus(cfg) == 5
    no_grad = ["resources.influence.keep_alive=false"]
    assert local_cpus(load_config("configs/tiny-cpu.yaml", no_grad)) == 4  # training held while the actors run
    assert local_cpus(load_config("configs/tiny-cpu.yaml", ["trainer.keep_alive=false"])) == 4  # actors held in training
    assert local_cpus(load_config("configs/tiny-cpu.yaml", ["trainer.keep_alive=false", *no_grad])) == 2
    assert local_cpus(load_config("configs/tiny-cpu.yaml", ["resources.local_num_cpus=3"])) == 3
    split = load_config("configs/tiny-cpu.yaml", ["resources.placement=split", "resources.rollout.num_workers=3",
                                                  *no_grad])
    assert training_cpus(split) == 2 * 0.5 + 3 * 1.0 and local_cpus(split) == 7  # + max(2 actors, 3 writers)
    assert not sleeps(cfg)  # sleep mode is a GPU colocation feature
    gpu = load_config("configs/tiny-cpu.yaml", ["resources.device=cuda", "resources.rollout.num_gpus=0.5",
                                                "resources.trainer.num_gpus=0.5", "resources.influence.num_gpus=1"])
    assert sleeps(gpu) and not sleeps(load_config("configs/tiny-cpu.yaml", [
        "resources.device=cuda", "resources.placement=split", "resources.rollout.num_gpus=1",
        "resources.trainer.num_gpus=1", "resources.influence.num_gpus=1"]))


def test_a_refusal_names_the_nodes_the_cluster_lost():
    from cropi.placement import lost_nodes_note

    alive = {"Alive": True, "NodeID": "aaaa1111bbbb", "NodeManagerAddress": "10.0.0.1", "Resources": {"CPU": 8.0}}
    dead = {"Alive": False, "NodeID": "cccc2222dddd", "NodeManagerAddress": "10.0.0.2",
            "Resources": {"CPU": 4.0, "GPU": 8.0}}
    assert lost_nodes_note([alive]) == ""
    assert lost_nodes_note([alive, dead]) == (" Lost node: 10.0.0.2 (node cccc2222, 4 CPU, 8 GPU); rerun the same "
                                              "command when the cluster has its resources back (finished work is kept).")
