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
from pathlib import Path

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


def _job_driver(run_dir: str):
    """The job's Python driver (not the `sh -c` Ray wraps it in)."""
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and "ray_jobs.cropi_loop" in cmd and any(run_dir in c for c in cmd) and "python" in Path(cmd[0]).name:
            return p
    raise AssertionError(f"no driver process for {run_dir}")


def _sigterm_pending(pid: int) -> bool:
    """SIGTERM (15) waits in the process's or a thread's pending set (/proc status, hex masks)."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    masks = [int(x.split()[1], 16) for x in status if x.startswith(("ShdPnd:", "SigPnd:"))]
    return any(m & (1 << (signal.SIGTERM - 1)) for m in masks)


def test_ray_job_stop_preempts_the_job_and_a_resubmitted_job_resumes(reference, tmp_path):
    """`ray job stop` (SIGTERM to the entrypoint's process group, SIGKILL after
    RAY_JOB_STOP_WAIT_TIME_S) against a local head: the job stops at the end of a training step
    with its checkpoint saved and a `preempted` event; the same job submitted again resumes from
    that checkpoint and ends with the undisturbed run's outputs."""
    import subprocess
    import sys
    import tempfile

    from ray.job_submission import JobSubmissionClient

    from tests.test_loop import BIN, ROOT, _free_port, _stop_head

    tmp = Path(tempfile.mkdtemp(prefix="crs", dir="/tmp"))  # short: Ray's socket paths are length-limited
    dash, gcs = _free_port(), _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_JOB_STOP_WAIT_TIME_S": "120"}
    env.pop("RAY_ADDRESS", None)
    subprocess.run([str(BIN / "ray"), "start", "--head", "--dashboard-host", "127.0.0.1", f"--dashboard-port={dash}",
                    f"--port={gcs}", "--num-cpus=5", f"--temp-dir={tmp}", "--disable-usage-stats"],
                   env=env, check=True, capture_output=True, timeout=120)
    run_dir = tmp_path / "run"
    sets = [f"run.dir={run_dir}", f"data.data_dir={tmp_path / 'tasks'}", *harness.SETS,
            f"model.path={ROOT / 'artifacts' / 'base-model'}"]
    client = JobSubmissionClient(f"http://127.0.0.1:{dash}")

    def submit(job_id: str) -> None:
        cmd = [str(BIN / "ray"), "job", "submit", "--no-wait", "--submission-id", job_id, "--working-dir", str(ROOT),
               "--", sys.executable, "-m", "ray_jobs.cropi_loop", "--config", "configs/tiny-cpu.yaml",
               *[a for s in sets for a in ("--set", s)]]
        t0 = time.time()
        while True:  # right after `ray start` the job agent may not be up yet ("No available agent")
            out = subprocess.run(cmd, env={**env, "RAY_ADDRESS": f"http://127.0.0.1:{dash}"}, capture_output=True,
                                 text=True, timeout=180)
            if out.returncode == 0 or time.time() - t0 > 240:
                break
            time.sleep(3)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]

    def wait_status(job_id: str, timeout: float = 900) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = str(client.get_job_status(job_id))
            if any(s in status for s in ("SUCCEEDED", "FAILED", "STOPPED")):
                return status
            time.sleep(1)
        return status

    try:
        submit("cropi-stop-1")
        metrics = run_dir / "phase-0" / "train_metrics.jsonl"
        deadline = time.time() + 900
        while harness.count_lines(metrics) < 3 and time.time() < deadline:
            time.sleep(0.2)
        assert harness.count_lines(metrics) >= 3, client.get_job_logs("cropi-stop-1")[-3000:]
        # A tiny step takes about 0.25 s, less than `ray job stop` needs to reach the driver, so
        # without this the run could end before the signal: freeze the driver (its actors run on),
        # stop the job, and let the driver go on once Ray's SIGTERM is pending on it.
        driver = _job_driver(str(run_dir))
        driver.suspend()
        t0 = time.time()
        try:
            subprocess.run([str(BIN / "ray"), "job", "stop", "--no-wait", "cropi-stop-1"],
                           env={**env, "RAY_ADDRESS": f"http://127.0.0.1:{dash}"}, check=True, capture_output=True,
                           timeout=120)
            while not _sigterm_pending(driver.pid) and time.time() - t0 < 120:
                time.sleep(0.1)
            assert _sigterm_pending(driver.pid), "ray job stop sent no SIGTERM to the driver within 120 s"
        finally:
            driver.resume()
        status = wait_status("cropi-stop-1")
        logs = client.get_job_logs("cropi-stop-1")
        assert "STOPPED" in status, status + logs[-3000:]
        assert "cropi: preempted (SIGTERM): stopped at phase 0 training after step" in logs, logs[-3000:]
        ev = _events(run_dir, "preempted")
        assert len(ev) == 1 and ev[0]["stage"] == "train", ev
        last = _steps(run_dir)[-1]
        print(f"ray job stop: stopped {time.time() - t0:.1f} s later, after step {last}")
        submit("cropi-stop-2")
        status = wait_status("cropi-stop-2")
        logs = client.get_job_logs("cropi-stop-2")
        assert "SUCCEEDED" in status, status + logs[-3000:]
        m = re.search(r"resumed from DeepSpeed checkpoint \S+ \(step (\d+)\)", logs)
        assert m and int(m.group(1)) == last, logs[-3000:]
        harness.check_whole(run_dir)
        assert harness.differences(reference[1], harness.outputs(run_dir)) == []
    finally:
        _stop_head(tmp)
