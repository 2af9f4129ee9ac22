"""Fault injection: a process of a stage is killed (SIGKILL) at a seeded point of the phase, and
the run finishes by itself, in the same command, with outputs an undisturbed run would have:
every prompt once in the influence store, every step logged once.

- a gradient actor: Ray restarts it (resources.influence.max_restarts) and retries its shard;
- a trainer rank: the training stage is redone within the job from the last DeepSpeed
  checkpoint with new ranks and engines (run.max_stage_retries), recorded as a stage_retry event.

`make faults` runs this folder; CI runs the short sample (tests/test_trainer.py's killed rank,
tests/test_rollout_buffer.py's killed worker, tests/test_loop.py's killed driver).
"""

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.faults]

ROOT = Path(__file__).resolve().parents[2]


def _pids(actor: str, root_pid: int) -> list[int]:
    from tests.support.procs import actor_pids

    return actor_pids(actor, root_pid)


def _small(tmp: Path) -> list[str]:
    sets = [f"run.dir={tmp / 'run'}", f"data.data_dir={tmp / 'tasks'}", "data.train_size=192", "data.val_size=8",
            "rollout.k_val=8", "rollout.shard_size=16", "run.num_phases=1", "trainer.steps_per_phase=6",
            "trainer.prompts_per_step=4", "trainer.group_size=4", "trainer.eval_every=3", "trainer.eval_samples=2",
            "trainer.save_every=2", "selection.alpha=0.25", "selection.max_val_grads=3"]
    return [a for s in sets for a in ("--set", s)]


def _wait(pred, timeout: float, proc) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not pred():
        time.sleep(0.1)
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    assert pred(), "the fault point was not reached in time"


def test_killed_gradient_actor_is_restarted_and_its_shard_retried(tiny_model, tmp_path):
    rng = random.Random(14)
    cmd = [sys.executable, "-m", "cropi.cli", "run", "configs/tiny-cpu.yaml", *_small(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    train_dir = tmp_path / "run" / "phase-0" / "influence" / "train"
    after = rng.randint(1, 6)  # shards written before the kill (of 12)
    _wait(lambda: train_dir.is_dir() and len(list(train_dir.glob("*.parquet"))) >= after and _pids("GradientActor", proc.pid),
          600, proc)
    os.kill(_pids("GradientActor", proc.pid)[0], 9)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    ids = [r["prompt_id"] for p in sorted(train_dir.glob("*.parquet"))
           for r in pq.read_table(p, columns=["prompt_id"]).to_pylist()]
    assert sorted(ids) == list(range(192))  # every prompt exactly once


def test_killed_trainer_rank_is_recovered_within_the_job(tiny_model, tmp_path):
    rng = random.Random(15)
    cmd = [sys.executable, "-m", "cropi.cli", "run", "configs/tiny-cpu.yaml", *_small(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "run" / "phase-0" / "train_metrics.jsonl"
    at = rng.randint(2, 4)  # steps logged before the kill (a checkpoint every 2)
    _wait(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= at + 1, 900, proc)
    os.kill(_pids("TrainerRank", proc.pid)[-1], 9)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    assert "redoing the training stage in this job (attempt 1 of 1)" in out
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert steps == list(range(7))  # each step logged once, none lost
    events = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    retries = [e for e in events if e.get("event") == "stage_retry"]
    assert len(retries) == 1 and retries[0]["stage"] == "train" and retries[0]["phase"] == 0
    assert (tmp_path / "run" / "phase-0" / "checkpoint" / "model.safetensors").is_file()


def test_no_retry_when_configured_off(tiny_model, tmp_path):
    cmd = [sys.executable, "-m", "cropi.cli", "run", "configs/tiny-cpu.yaml", *_small(tmp_path),
           "--set", "run.max_stage_retries=0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "run" / "phase-0" / "train_metrics.jsonl"
    _wait(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 3, 900, proc)
    os.kill(_pids("TrainerRank", proc.pid)[-1], 9)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 2 and "rerun the same command to resume" in out, out[-3000:]
