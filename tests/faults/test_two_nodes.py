"""The loop on a real two-node Ray cluster on this machine (tests/support/two_nodes.py), and the
second node lost mid-run.

Placement: the head has 2 CPUs, the second node 3. The kept-alive gradient actors (2 x 1 CPU)
and the training placement (2 ranks x 0.5 + one engine: bundles of 1.5 and 0.5 CPU) cannot share
one node, so Ray's PACK puts them on different nodes (which goes where is Ray's choice; the test
checks that the actors ran on both). The driver joins through RAY_ADDRESS, so the trainer's
batches, the engines' rollouts and the gradient actors' results move between the two object stores.
"""

import json
import subprocess
import time

import pytest

from tests.faults import harness
from tests.support.two_nodes import BIN, TwoNodes

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.faults]


@pytest.fixture
def cluster():
    c = TwoNodes(head_cpus=2, node2_cpus=3).start()
    try:
        yield c
    finally:
        c.stop()


def _actor_nodes(cluster: TwoNodes) -> dict[str, set[str]]:
    """Actor class -> the node ids its actors ran on (from the GCS's actor table, dead ones too)."""
    code = ("import json, ray; from ray._private import state; ray.init(address=%r, logging_level='ERROR'); "
            "print(json.dumps([[a['ActorClassName'], a['Address']['NodeID']] for a in state.actors().values()]))"
            % cluster.address)
    out = subprocess.run([str(BIN / "python"), "-c", code], env=cluster.env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    nodes: dict[str, set[str]] = {}
    for cls, node in json.loads(out.stdout.strip().splitlines()[-1]):
        nodes.setdefault(cls.split(".")[-1], set()).add(node)
    return nodes


def test_the_loop_over_two_nodes_equals_the_single_node_run(reference, cluster, tmp_path):
    harness.run(tmp_path, ray_address=cluster.address)
    harness.check_whole(tmp_path / "run")
    assert harness.differences(reference[1], harness.outputs(tmp_path / "run")) == []
    nodes = _actor_nodes(cluster)
    used = set().union(*nodes.values())
    assert len(used) == 2, nodes  # the actors really ran on both nodes
    print("actors by node:", {k: sorted(n[:8] for n in v) for k, v in nodes.items()})


@pytest.mark.parametrize("stage", ["buffer", "influence", "train"])
def test_the_second_node_lost_mid_stage_then_the_rerun_matches(reference, cluster, tmp_path, stage):
    """Every process of the second node SIGKILLed at a seeded point of a stage. What is left (the
    head's 2 CPUs) cannot hold the gradient actors and the training placement together, so the job
    either finishes there (when the lost node held nothing it still needed) or fails within a bounded
    time (resources.placement_timeout_s, run.hang_timeout_s) naming the lost node; with the node
    back, the rerun ends with the undisturbed run's outputs and nothing written before the loss
    damaged or duplicated."""
    import random

    rng = random.Random(f"node-{stage}")
    run = tmp_path / "run"
    n = rng.randint(1, 4 if stage == "train" else 8)
    bounds = ["resources.placement_timeout_s=30", "run.hang_timeout_s=60", "trainer.sync_timeout_s=30"]
    proc = harness.start(tmp_path, *bounds, ray_address=cluster.address)
    harness.wait_until(lambda: harness.reached(run, stage, n), proc)
    t0 = time.time()
    assert cluster.kill_node2()
    out, _ = proc.communicate(timeout=600)  # reads as it runs: a full pipe would stall the run
    took = time.time() - t0
    if proc.returncode != 0:
        tail = out.split("cropi: error:")[-1]
        assert proc.returncode == 2 and "cropi: error:" in out and "Lost node" in tail, out[-3000:]
        print(f"node lost in the {stage} stage: failed after {took:.0f} s: {tail.strip()[:300]}")
        cluster.start_node2()
        harness.run(tmp_path, *bounds, ray_address=cluster.address)
    else:
        print(f"node lost in the {stage} stage: the job finished on what was left ({took:.0f} s)")
    harness.check_whole(run)
    assert harness.differences(reference[1], harness.outputs(run)) == []
