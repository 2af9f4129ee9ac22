"""Determinism: the same config and seed, run twice on one machine, compute the same buffer
(tokens, rewards, behaviour and vLLM log-probs), the same influence rows, the same selection, the
same metrics at every step, the same evaluations and a bit-identical final checkpoint. Without
this, "a recovered run equals an undisturbed one" (test_faults.py) could not be checked.

What makes it hold on CPU: every vLLM request carries a seed of its prompt (and step) alone, never
of the worker or batch (cropi.seeds), a shard or a step is computed by one process whatever worker
takes it, and torch's CPU kernels are deterministic for a fixed thread count. On GPUs vLLM's batched sampling and some CUDA kernels are
not bit-reproducible; that path is not run here.
"""

import pytest

from tests.faults import harness

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.faults]


def test_the_same_run_twice_computes_the_same_outputs(reference, tmp_path):
    _, want = reference
    harness.run(tmp_path)
    got = harness.outputs(tmp_path / "run")
    assert set(want) >= {"buffer/train", "phase-0/influence", "phase-0/selection", "phase-0/steps", "phase-0/checkpoint"}
    assert harness.differences(want, got) == []
