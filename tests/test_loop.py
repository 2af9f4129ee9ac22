"""The whole loop as a Ray job: `ray job submit` to a local head, and resume after the driver dies."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cropi.store import records

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _small(tmp: Path, phases: int, steps: int) -> list[str]:
    return [f"run.dir={tmp / 'run'}", f"model.path={ROOT / 'artifacts' / 'base-model'}",
            f"data.data_dir={tmp / 'tasks'}", "data.train_size=96", "data.val_size=8", "rollout.k_val=8",
            "rollout.shard_size=32", f"run.num_phases={phases}", f"trainer.steps_per_phase={steps}",
            "trainer.prompts_per_step=4", "trainer.group_size=4", "trainer.eval_every=2", "trainer.eval_samples=2",
            "trainer.save_every=2", "selection.alpha=0.25", "selection.max_val_grads=3"]


def _stop_head(temp_dir: Path) -> None:
    """Stop the head this test started, and only it: `ray stop` would kill every Ray on the
    machine (another run's, another test suite's). Its processes name its --temp-dir; the
    workers are their children."""
    import psutil

    procs = []
    for p in psutil.process_iter(["cmdline"]):
        if any(str(temp_dir) in c for c in (p.info["cmdline"] or [])):
            try:
                procs += [p, *p.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


def _sets(overrides):
    return [a for s in overrides for a in ("--set", s)]


def _check_run(run: Path, phases: int, steps: int) -> None:
    """Every phase complete; no row duplicated in the buffer, gradients, selections or metrics."""
    for split_dir in (run / "buffer").glob("**/shard-*.parquet"):
        t = pq.read_table(split_dir, columns=["prompt_id", "sample_index"]).to_pylist()
        assert len({(r["prompt_id"], r["sample_index"]) for r in t}) == len(t)
    train_ids = sorted(r["prompt_id"] for p in (run / "buffer" / "train").glob("*.parquet")
                       for r in pq.read_table(p, columns=["prompt_id"]).to_pylist())
    for m in range(phases):
        pdir = run / f"phase-{m}"
        ids = [r["prompt_id"] for p in sorted((pdir / "influence" / "train").glob("*.parquet"))
               for r in pq.read_table(p, columns=["prompt_id"]).to_pylist()]
        assert sorted(ids) == sorted(set(train_ids))
        sel = pq.read_table(pdir / "selection.parquet").to_pylist()
        assert len({r["prompt_id"] for r in sel}) == len(sel) == 96
        steps_seen = [json.loads(x)["step"] for x in (pdir / "train_metrics.jsonl").read_text().splitlines()]
        assert steps_seen == list(range(steps + 1))
        assert (pdir / "checkpoint" / "model.safetensors").is_file()
        # every phase is scored against targets formed from the same validation prompts
        targets = records.read(records.VAL_TARGETS, pdir / "influence" / "val_targets.json")
        first = records.read(records.VAL_TARGETS, run / "phase-0" / "influence" / "val_targets.json")
        assert {s: t["prompt_ids"] for s, t in targets.items()} == {s: t["prompt_ids"] for s, t in first.items()}
        for name, t in targets.items():  # min(3, live) prompts drawn from the set's live ones
            val = pq.read_table(run / "buffer" / "val" / name, columns=["prompt_id", "group_std"]).to_pylist()
            live = {r["prompt_id"] for r in val if r["group_std"] > 0}
            assert set(t["prompt_ids"]) <= live and len(t["prompt_ids"]) == min(3, len(live))
        assert json.loads((pdir / "phase.json").read_text())["method"] == "cropi"
    assert (run / "report" / "report.md").is_file() and (run / "report" / "validation.png").is_file()
    # every record the run wrote carries its schema version (cropi.store.records)
    stamped = [run / "run_result.json", run / "phase-0" / "train_summary.json", run / "phase-0" / "selection_summary.json",
               run / "phase-0" / "influence" / "manifest.json", run / "phase-0" / "influence" / "plan.json",
               run / "run.json", run / "phase-0" / "phase.json", run / "buffer" / "manifest.json",
               run / "phase-0" / "influence" / "val_targets.json"]
    assert [json.loads(p.read_text())["schema_version"] for p in stamped] == [1] * len(stamped)
    for log in (run / "metrics.jsonl", run / "phase-0" / "train_metrics.jsonl", run / "phase-0" / "eval.jsonl"):
        assert {json.loads(x)["schema_version"] for x in log.read_text().splitlines()} == {1}, log


def test_ray_job_submit_to_local_head(tiny_model, tmp_path):
    tmp = Path(tempfile.mkdtemp(prefix="crj", dir="/tmp"))  # short: Ray's socket paths are length-limited
    dash, gcs, metrics = _free_port(), _free_port(), _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # loopback only
    env.pop("RAY_ADDRESS", None)
    start = [str(BIN / "ray"), "start", "--head", "--dashboard-host", "127.0.0.1", f"--dashboard-port={dash}",
             f"--port={gcs}", "--num-cpus=5", f"--metrics-export-port={metrics}", f"--temp-dir={tmp}",
             "--disable-usage-stats"]
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=120)
    try:
        jenv = {**env, "RAY_ADDRESS": f"http://127.0.0.1:{dash}"}
        job_id = f"cropi-test-{os.getpid()}-{int(time.time())}"
        submit = [str(BIN / "ray"), "job", "submit", "--no-wait", "--submission-id", job_id, "--working-dir", str(ROOT), "--",
                  sys.executable, "-m", "ray_jobs.cropi_loop", "--config", "configs/tiny-cpu.yaml",
                  *_sets(_small(tmp_path, 1, 2) + ["run.trackers=[tensorboard]"])]
        t_submit = time.time()
        while True:  # right after `ray start` the job agent may not be up yet ("No available agent")
            sub = subprocess.run(submit, env=jenv, capture_output=True, text=True, timeout=180)
            if sub.returncode == 0 or time.time() - t_submit > 240:
                break
            time.sleep(3)
        assert sub.returncode == 0, sub.stdout[-2000:] + sub.stderr[-3000:]
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(f"http://127.0.0.1:{dash}")
        seen_metrics, scrapes, empty_labels, status, deadline = set(), [], [], "", time.time() + 600
        while time.time() < deadline:
            status = str(client.get_job_status(job_id))
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
                lines = [ln for ln in text.splitlines() if "cropi_" in ln and not ln.startswith("#")]
                scrapes.append({ln.split("{")[0] for ln in lines})
                seen_metrics |= scrapes[-1]
                empty_labels += [ln for ln in lines if re.search(r'[{,](run|set|stage|phase)=""', ln)]  # ours, not Ray's
            except OSError:
                pass
            if any(s in status for s in ("SUCCEEDED", "FAILED", "STOPPED")):
                break
            time.sleep(2)
        logs = client.get_job_logs(job_id)
        assert "SUCCEEDED" in status, status + logs[-3000:]
        # quiet by default: none of the engines' chatter, cropi's step lines there
        for noise in ("RotaryEmbedding: Failed to load weights", "Loading weights:", "FutureWarning",
                      "NUMA binding", "CPU backend doesn't allow", "built successfully",
                      "doesn't include CPU backend", "NumPy array is not writable"):
            assert noise not in logs, f"{noise!r} in the job log"
        assert "phase 0 step 2/2" in logs
        _check_run(tmp_path / "run", 1, 2)
        from tests.test_trackers import read_tensorboard

        scalars, images = read_tensorboard(tmp_path / "run" / "tensorboard")
        logged = [json.loads(x) for x in (tmp_path / "run" / "phase-0" / "train_metrics.jsonl").read_text().splitlines()]
        assert [v for _, v in scalars["train/reward_mean"]] == pytest.approx([m["reward_mean"] for m in logged[1:]])
        assert "selection/selected" in scalars and {"report/validation", "report/selection"} <= set(images)
        exported = {m.replace("ray_", "", 1) for m in seen_metrics}
        assert {"cropi_step", "cropi_reward_mean", "cropi_val_pass_at_1"} <= exported, seen_metrics
        assert not empty_labels, empty_labels[:3]  # each gauge carries only its own labels
        # once exported, the phase stays exported to the end of the job (refreshed, not dropped
        # while influence and selection run); the last scrapes may follow the job's end
        with_phase = [i for i, names in enumerate(scrapes) if "ray_cropi_phase" in names]
        assert with_phase, scrapes
        gaps = [i for i in range(with_phase[0], with_phase[-1]) if "ray_cropi_phase" not in scrapes[i]]
        assert not gaps, f"ray_cropi_phase missing from scrapes {gaps} of {len(scrapes)}"
    finally:
        _stop_head(tmp)


def _logged(run: Path, phases: int) -> dict:
    """What a run decided and logged: each phase's selected ids and (step, reward) of its metrics."""
    out = {}
    for m in range(phases):
        pdir = run / f"phase-{m}"
        out[m, "selected"] = sorted(r["prompt_id"] for r in pq.read_table(pdir / "selection.parquet").to_pylist()
                                    if r["selected"])
        out[m, "steps"] = [(x["step"], x.get("reward_mean")) for x in
                           map(json.loads, (pdir / "train_metrics.jsonl").read_text().splitlines())]
    return out


@pytest.mark.slow  # minutes: `make test-all` (CI runs the rest)
def test_killed_driver_rerun_finishes_without_duplicates(tiny_model, tmp_path):
    """Kill the driver (and its local Ray) inside phase 1's GRPO steps, where the engines and ranks
    kept alive since phase 0 serve it; the rerun resumes mid-phase and logs what an undisturbed run
    logs: the same selections, the same steps with the same rewards."""
    undisturbed = tmp_path / "undisturbed"
    base = [sys.executable, "-m", "cropi.cli", "run", "configs/tiny-cpu.yaml"]
    ref = subprocess.run(base + _sets(_small(undisturbed, 2, 4)), capture_output=True, text=True, timeout=900)
    assert ref.returncode == 0, ref.stderr[-3000:]
    args = base + _sets(_small(tmp_path, 2, 4))
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    metrics = tmp_path / "run" / "phase-1" / "train_metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:  # phase 1, step 2 done
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait(timeout=60)
    time.sleep(2)
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "phase 0: complete, skipped" in rerun.stdout + rerun.stderr
    assert "buffer: complete, skipped" in rerun.stdout + rerun.stderr
    events = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["stage"] for e in events if e.get("event") == "stage"].count("buffer") == 1  # the re-check is not timed
    assert "resumed from DeepSpeed checkpoint step-2" in rerun.stdout + rerun.stderr
    _check_run(tmp_path / "run", 2, 4)
    status = subprocess.run([sys.executable, "-m", "cropi.cli", "status", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=60).stdout
    assert "phase-1:" in status and "checkpoint saved" in status and "run finished" in status
    assert _logged(tmp_path / "run", 2) == _logged(undisturbed / "run", 2)
