"""The fault suite where the plain runs do not go: projected influence, the zero-gradient refresh
and the drift re-roll, each with one process killed at a seeded point of the stage only that mode
has, and the outputs compared with an undisturbed run of the same mode (harness.differences)."""

import os
import random
import time

import pytest

from tests.faults import harness

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.faults]

MODES = {
    # the paper's mode: sparse projection; a gradient actor killed while it projects
    "projected": ["influence.mode=projected", "influence.proj_kind=sjlt", "influence.proj_dim=256"],
    # zero-gradient prompts re-rolled with theta_0 before scoring; a writer killed while it re-rolls
    "refresh": ["influence.refresh_zero_grad=true"],
    # phase 1 finds the buffer drifted (KL > 1e-4; phase 0 scores theta_0 = beta: 0) and re-rolls it with theta_1; a writer killed then
    "drift": ["run.num_phases=2", "influence.kl_refresh_threshold=0.0001"],
}


def _sets(mode):
    return MODES[mode]


@pytest.fixture(scope="module")
def references(tiny_model, tmp_path_factory):
    cache = {}

    def get(mode):
        if mode not in cache:
            root = tmp_path_factory.mktemp(f"reference-{mode}")
            harness.run(root, *_sets(mode))
            harness.check_whole(root / "run")
            cache[mode] = harness.outputs(root / "run")
        return cache[mode]
    return get


def _shards(d):
    return len(list(d.rglob("shard-*.parquet"))) if d.is_dir() else 0


@pytest.mark.parametrize("mode,actor,where,most", [
    ("projected", "GradientActor", "phase-0/influence/train", 6),
    ("refresh", "BufferWriter", "phase-0/refresh", 1),
    ("drift", "BufferWriter", "phase-1/rebuffer", 4),
])
def test_a_kill_in_each_mode_ends_as_the_undisturbed_run(references, tmp_path, mode, actor, where, most):
    want = references(mode)
    rng = random.Random(f"mode-{mode}")
    run = tmp_path / "run"
    proc = harness.start(tmp_path, *_sets(mode))
    after = rng.randint(0, most)  # shards of the stage written before the kill
    harness.wait_until(lambda: _shards(run / where) >= after and harness.pids(actor, proc) and
                       (run / where).is_dir(), proc, poll=0.05)
    time.sleep(rng.uniform(0.0, 0.2))
    victims = harness.pids(actor, proc)
    assert victims, f"no {actor} to kill in the {mode} stage"
    os.kill(victims[0], 9)
    harness.finish(proc)
    harness.check_whole(run)
    assert harness.differences(want, harness.outputs(run)) == []
