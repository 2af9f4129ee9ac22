"""The loop on a real two-node Ray cluster on this machine (tests/support/two_nodes.py), and the
second node lost mid-run.

Placement: the head has 1 CPU, the second node 4, so the kept-alive gradient actors (2 x 1 CPU)
and the training placement (2 ranks x 0.5 + one engine, 2 CPU) fill the second node and the
selector and (in part) the buffer writer run on the head (Ray's PACK: a group's bundles go to the
first node that holds them). The driver joins through RAY_ADDRESS, so the trainer's batches, the
engines' rollouts and the gradient actors' results move between the two object stores.
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
    c = TwoNodes(head_cpus=1, node2_cpus=4).start()
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


def test_the_second_node_lost_while_training_fails_naming_it_and_the_rerun_matches(reference, cluster, tmp_path):
    """The remaining head (1 CPU) cannot hold the training stage (2 CPU): the job fails within a
    bounded time naming the lost node; with the node back, the rerun ends as the undisturbed run."""
    metrics = tmp_path / "run" / "phase-0" / "train_metrics.jsonl"
    proc = harness.start(tmp_path, "--set", "resources.placement_timeout_s=30", ray_address=cluster.address)
    harness.wait_until(lambda: harness.count_lines(metrics) >= 3, proc)
    t0 = time.time()
    killed = cluster.kill_node2()
    assert killed
    out = harness.finish(proc, rc=2, timeout=600)
    took = time.time() - t0
    tail = out.split("cropi: error:")[-1]
    assert "cropi: error:" in out and "Lost node" in tail and "train" in tail, out[-3000:]
    print(f"node lost while training: the job failed after {took:.0f} s: {tail.strip()[:400]}")
    before = harness.count_lines(metrics)
    cluster.start_node2()
    harness.run(tmp_path, "--set", "resources.placement_timeout_s=30", ray_address=cluster.address)
    harness.check_whole(tmp_path / "run")  # nothing written before the loss was damaged or duplicated
    assert harness.count_lines(metrics) >= before
    assert harness.differences(reference[1], harness.outputs(tmp_path / "run")) == []
