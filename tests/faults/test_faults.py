"""Fault injection: a process of a stage is killed (SIGKILL) at a seeded point of the phase, the
disk fills during a shard write, or a crash leaves a truncated shard, and the run finishes (by
itself where Ray or the loop restarts the process, else when the same command is rerun) with the
outputs of the undisturbed run (`reference`, tests/faults/conftest.py): every prompt once in the
buffer and in the influence store, one selection row per prompt, every step logged once, and
every value (trajectories, influence rows, selection, step metrics, evaluations, final weights)
equal to the undisturbed run's (harness.differences).

- a rollout worker, a gradient actor, the selector: Ray restarts the actor and retries its item
  (resources.rollout/influence.max_restarts);
- a trainer rank, a vLLM engine while training (weights are synced into it every step): the
  training stage is redone within the job from the last DeepSpeed checkpoint, with new ranks and
  engines (run.max_stage_retries), recorded as a stage_retry event;
- a trainer rank or a vLLM engine stopped (SIGSTOP) while training: the step, rollout or sync
  that waits on it fails after run.hang_timeout_s / trainer.sync_timeout_s naming it, the
  stopped process is killed, and the training stage is redone as for a death;
- the driver (with the local Ray it started) in the buffer, influence or training stage: the rerun
  resumes;
- a full disk (a small tmpfs) during the buffer: the command fails naming the file, every shard on
  disk is whole, and the rerun with space resumes;
- a truncated shard left by a crash: the rerun sets it aside and rolls it out again.

`make faults` runs this folder (with test_determinism.py); CI runs a short sample
(tests/test_weight_sync.py's killed engine named by the sync, tests/test_trainer.py's NaN rank).
"""

import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from cropi.store.files import parquet_problem
from tests.faults import harness

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.faults]


def _same_as_reference(reference, run_dir: Path, damaged: int = 0) -> None:
    harness.check_whole(run_dir, damaged)
    assert harness.differences(reference[1], harness.outputs(run_dir)) == []


def _events(run_dir: Path, kind: str) -> list[dict]:
    return [e for e in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if e.get("event") == kind]


def _kill_actor(actor: str, proc, rng: random.Random, pick=-1) -> None:
    time.sleep(rng.uniform(0.0, 0.2))
    victims = harness.pids(actor, proc)
    assert victims, f"no {actor} process to kill"
    os.kill(victims[pick], 9)


def test_killed_rollout_worker_is_restarted_and_its_shard_retried(reference, tmp_path):
    rng = random.Random(13)
    proc = harness.start(tmp_path)
    train = tmp_path / "run" / "buffer" / "train"
    after = rng.randint(1, 8)  # shards written before the kill (of 12)
    harness.wait_until(lambda: harness.count_files(train) >= after and harness.pids("BufferWriter", proc), proc)
    _kill_actor("BufferWriter", proc, rng, pick=0)
    harness.finish(proc)
    _same_as_reference(reference, tmp_path / "run")


def test_killed_gradient_actor_is_restarted_and_its_shard_retried(reference, tmp_path):
    rng = random.Random(14)
    proc = harness.start(tmp_path)
    train = tmp_path / "run" / "phase-0" / "influence" / "train"
    after = rng.randint(1, 6)  # gradient shards written before the kill (of 12)
    harness.wait_until(lambda: harness.count_files(train) >= after and harness.pids("GradientActor", proc), proc)
    _kill_actor("GradientActor", proc, rng, pick=0)
    harness.finish(proc)
    _same_as_reference(reference, tmp_path / "run")


def test_killed_selector_is_restarted_and_its_call_retried(reference, tmp_path):
    proc = harness.start(tmp_path)
    # Ray titles the selector's process ray::Selector.select while the call runs: killed then, the
    # command can only finish (exit 0) if Ray restarted the actor and retried the call
    harness.wait_until(lambda: harness.pids("Selector.select", proc), proc, poll=0.01)
    os.kill(harness.pids("Selector.select", proc)[0], 9)
    harness.finish(proc)
    _same_as_reference(reference, tmp_path / "run")


def test_killed_trainer_rank_is_recovered_within_the_job(reference, tmp_path):
    rng = random.Random(15)
    proc = harness.start(tmp_path)
    metrics = tmp_path / "run" / "phase-0" / "train_metrics.jsonl"
    at = rng.randint(2, 4)  # steps logged before the kill (a checkpoint every 2)
    harness.wait_until(lambda: harness.count_lines(metrics) >= at + 1, proc)
    _kill_actor("TrainerRank", proc, rng)
    out = harness.finish(proc)
    assert "redoing the training stage in this job (attempt 1 of 1)" in out
    retries = _events(tmp_path / "run", "stage_retry")
    assert len(retries) == 1 and retries[0]["stage"] == "train" and retries[0]["phase"] == 0
    _same_as_reference(reference, tmp_path / "run")


def test_killed_vllm_engine_while_training_is_recovered_within_the_job(reference, tmp_path):
    rng = random.Random(16)
    proc = harness.start(tmp_path)
    metrics = tmp_path / "run" / "phase-0" / "train_metrics.jsonl"
    at = rng.randint(1, 4)
    harness.wait_until(lambda: harness.count_lines(metrics) >= at + 1 and harness.pids("RolloutEngine", proc), proc)
    _kill_actor("RolloutEngine", proc, rng)
    out = harness.finish(proc)
    assert "redoing the training stage in this job (attempt 1 of 1)" in out
    assert len(_events(tmp_path / "run", "stage_retry")) == 1
    _same_as_reference(reference, tmp_path / "run")


@pytest.mark.parametrize("actor", ["TrainerRank", "RolloutEngine"])
def test_a_stopped_rank_or_engine_is_taken_as_hung_killed_and_the_stage_redone(reference, tmp_path, actor):
    """SIGSTOP, not death: the step, the rollout or the sync waits at most its timeout, names the
    actor, kills it, and the training stage is redone within the job; outputs as undisturbed."""
    import signal

    rng = random.Random(f"hung-{actor}")
    proc = harness.start(tmp_path, "run.hang_timeout_s=45", "trainer.sync_timeout_s=45")  # > an engine start-up here
    metrics = tmp_path / "run" / "phase-0" / "train_metrics.jsonl"
    at = rng.randint(2, 4)
    harness.wait_until(lambda: harness.count_lines(metrics) >= at + 1 and harness.pids(actor, proc), proc)
    time.sleep(rng.uniform(0.0, 0.2))
    victim = harness.pids(actor, proc)[-1]
    os.kill(victim, signal.SIGSTOP)
    t_stop = time.time()
    out = harness.finish(proc)
    assert "redoing the training stage in this job (attempt 1 of 1)" in out
    retries = _events(tmp_path / "run", "stage_retry")
    assert len(retries) == 1 and " did not " in retries[0]["error"], retries  # names what hung
    print(f"{actor} stopped; taken as hung after {retries[0]['time'] - t_stop:.1f} s: {retries[0]['error'][:200]}")
    assert not Path(f"/proc/{victim}").exists() or Path(f"/proc/{victim}/stat").read_text().split()[2] == "Z"
    _same_as_reference(reference, tmp_path / "run")


@pytest.mark.parametrize("stage", ["buffer", "influence", "train"])
def test_killed_driver_then_rerun_resumes(reference, tmp_path, stage):
    rng = random.Random(f"driver-{stage}")
    run = tmp_path / "run"
    n = rng.randint(1, 5 if stage == "train" else 10)
    proc = harness.start(tmp_path)
    harness.wait_until(lambda: harness.reached(run, stage, n), proc)
    time.sleep(rng.uniform(0.0, 0.5))
    harness.kill_run(proc)
    harness.run(tmp_path)
    _same_as_reference(reference, run)


def _mount_tmpfs(where: Path, size_bytes: int) -> None:
    where.mkdir(parents=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(where)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"a full disk needs a small tmpfs, and mount failed here: {out.stderr.strip()}")


def test_full_disk_during_a_shard_write_fails_cleanly_and_the_rerun_resumes(reference, tmp_path):
    ref_buffer = sum(p.stat().st_size for p in (reference[0] / "buffer").rglob("*") if p.is_file())
    run = tmp_path / "run"
    _mount_tmpfs(run, (ref_buffer // 2 // 4096 + 1) * 4096)  # half the buffer fits
    try:
        out = harness.run(tmp_path, rc=2)
        assert "cropi: error:" in out and "No space left on device" in out and "shard-" in out, out[-3000:]
        assert "Traceback" not in out.split("cropi: error:")[-1]
        shards = list((run / "buffer").rglob("shard-*.parquet"))
        assert shards and all(parquet_problem(p) is None for p in shards)  # what is there is whole
        subprocess.run(["mount", "-o", "remount,size=1g", str(run)], check=True)  # space freed
        out = harness.run(tmp_path)
        _same_as_reference(reference, run)
    finally:
        subprocess.run(["umount", "-l", str(run)], capture_output=True)


def test_truncated_shard_left_by_a_crash_is_rolled_out_again(reference, tmp_path):
    rng = random.Random(17)
    proc = harness.start(tmp_path)
    train = tmp_path / "run" / "buffer" / "train"
    n = rng.randint(2, 8)
    harness.wait_until(lambda: harness.count_files(train) >= n, proc)
    harness.kill_run(proc)
    victim = rng.choice(sorted(train.glob("shard-*.parquet")))
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # its tail never reached the disk
    out = harness.run(tmp_path)
    assert f"buffer: {victim.name}: not a whole Parquet file" in out and "writing it again" in out
    assert (train / f".{victim.name}.damaged").is_file()
    _same_as_reference(reference, tmp_path / "run", damaged=1)


def test_no_retry_when_configured_off(tiny_model, tmp_path):
    proc = harness.start(tmp_path, "run.max_stage_retries=0")
    metrics = tmp_path / "run" / "phase-0" / "train_metrics.jsonl"
    harness.wait_until(lambda: harness.count_lines(metrics) >= 3, proc)
    _kill_actor("TrainerRank", proc, random.Random(18))
    out = harness.finish(proc, rc=2)
    assert "rerun the same command to resume" in out, out[-3000:]
    shutil.rmtree(tmp_path / "run", ignore_errors=True)
