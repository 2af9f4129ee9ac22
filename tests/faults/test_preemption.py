"""Preemption: SIGTERM to the driver (what Kubernetes, `ray job stop` and a scheduler's time limit
send; cropi.preempt) during training stops the run at the end of the step, saves that step's
DeepSpeed checkpoint even where trainer.save_every would not, writes a `preempted` event and exits
75; the rerun resumes from that very checkpoint and ends with the undisturbed run's outputs. A
second SIGTERM exits at once, every file whole, and the rerun still ends identical."""

import json
import os
import random
import re
import signal
import time

import pytest

from tests.faults import harness

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.faults]


def _events(run_dir, kind):
    return [e for e in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if e.get("event") == kind]


def _steps(run_dir):
    return [json.loads(x)["step"] for x in (run_dir / "phase-0" / "train_metrics.jsonl").read_text().splitlines()]


def test_sigterm_while_training_stops_at_the_step_and_resumes_from_its_checkpoint(reference, tmp_path):
    rng = random.Random(31)
    proc = harness.start(tmp_path)
    run_dir = tmp_path / "run"
    metrics = run_dir / "phase-0" / "train_metrics.jsonl"
    at = rng.choice([2, 4])  # steps 0..at logged before the signal: step at+1 is one save_every (2) skips
    harness.wait_until(lambda: harness.count_lines(metrics) >= at + 1, proc)
    t0 = time.time()
    os.kill(proc.pid, signal.SIGTERM)  # the driver only, as a pod's PID 1 gets it
    out = harness.finish(proc, rc=75)
    stopped_in = time.time() - t0
    assert "cropi: preempted (SIGTERM): stopped at phase 0 training after step" in out, out[-3000:]
    last = _steps(run_dir)[-1]
    assert 1 <= last < harness.STEPS
    ev = _events(run_dir, "preempted")
    assert len(ev) == 1 and ev[0]["stage"] == "train" and ev[0]["phase"] == 0
    out = harness.run(tmp_path)
    m = re.search(r"resumed from DeepSpeed checkpoint \S+ \(step (\d+)\)", out)
    assert m and int(m.group(1)) == last, out[-3000:]  # that checkpoint, not the last periodic one
    harness.check_whole(run_dir)
    assert harness.differences(reference[1], harness.outputs(run_dir)) == []
    print(f"stopped {stopped_in:.1f} s after SIGTERM, at step {last} (signal after step {at})")


def test_second_sigterm_exits_at_once_and_files_stay_whole(reference, tmp_path):
    proc = harness.start(tmp_path)
    run_dir = tmp_path / "run"
    metrics = run_dir / "phase-0" / "train_metrics.jsonl"
    harness.wait_until(lambda: harness.count_lines(metrics) >= 2, proc)
    os.kill(proc.pid, signal.SIGTERM)
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGTERM)
    out = harness.finish(proc, rc=75)
    assert "a second SIGTERM during the grace period" in out, out[-3000:]
    if _alive(proc.pid):  # what is left of the local Ray it started (the driver exited without shutting it down)
        os.killpg(proc.pid, signal.SIGKILL)
    harness.run(tmp_path)
    harness.check_whole(run_dir)
    assert harness.differences(reference[1], harness.outputs(run_dir)) == []


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except OSError:
        return False
