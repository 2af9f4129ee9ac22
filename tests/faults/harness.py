"""One small run (the buffer, exact influence, a selection, six GRPO steps with a DeepSpeed
checkpoint every two), started, disturbed and read back the same way by every fault test and by
the determinism test.

`outputs(run_dir)` is everything a run computes, in a form two runs can be compared by: the
buffer's trajectories, the influence rows, the selection, every step's metrics (timings left
out), every evaluation, and the final checkpoint's tensors. `differences(a, b)` lists where two
such outputs differ, by name, empty when they are equal.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
NUM_PROMPTS = 192
STEPS = 6

SETS = ["data.train_size=192", "data.val_size=8", "rollout.k_val=8", "rollout.shard_size=16", "run.num_phases=1",
        "trainer.steps_per_phase=6", "trainer.prompts_per_step=4", "trainer.group_size=4", "trainer.eval_every=3",
        "trainer.eval_samples=2", "trainer.save_every=2", "selection.alpha=0.25", "selection.max_val_grads=3"]

# per-step fields that measure the machine, not the run
TIMING_KEYS = ("wall_time", "tokens_per_s")


def command(root: Path, *extra: str) -> list[str]:
    sets = [f"run.dir={root / 'run'}", f"data.data_dir={root / 'tasks'}", *SETS, *extra]
    return [sys.executable, "-m", "cropi.cli", "run", "configs/tiny-cpu.yaml", *[a for s in sets for a in ("--set", s)]]


def start(root: Path, *extra: str, ray_address: str | None = None) -> subprocess.Popen:
    """The run in its own session, so that killing it takes the local Ray it starts along; with
    ray_address, the run joins that cluster instead (tests/support/two_nodes.py)."""
    env = {**os.environ, **({"RAY_ADDRESS": ray_address, "RAY_AUTH_MODE": "disabled"} if ray_address else {})}
    return subprocess.Popen(command(root, *extra), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, env=env)


def finish(proc: subprocess.Popen, timeout: float = 900, rc: int = 0) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == rc, f"exit {proc.returncode}, wanted {rc}:\n{out[-4000:]}"
    return out


def run(root: Path, *extra: str, rc: int = 0, ray_address: str | None = None) -> str:
    return finish(start(root, *extra, ray_address=ray_address), rc=rc)


def kill_run(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and everything in its session (its local Ray), as a lost machine would."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    time.sleep(2)


def wait_until(pred, proc: subprocess.Popen, timeout: float = 900, poll: float = 0.1) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not pred():
        time.sleep(poll)
    assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before the fault point:\n{proc.stdout.read()[-3000:]}"
    assert pred(), "the fault point was not reached in time"


def pids(actor: str, proc: subprocess.Popen) -> list[int]:
    from tests.support.procs import actor_pids

    return actor_pids(actor, proc.pid)


def reached(run_dir: Path, stage: str, n: int) -> bool:
    """The seeded fault point of a stage: n buffer shards, n gradient shards, or n training steps
    logged (after step 0)."""
    if stage == "buffer":
        return count_files(run_dir / "buffer" / "train") >= n
    if stage == "influence":
        return count_files(run_dir / "phase-0" / "influence" / "train") >= n
    return count_lines(run_dir / "phase-0" / "train_metrics.jsonl") >= n + 1


def count_files(d: Path, pattern: str = "shard-*.parquet") -> int:
    return len(list(d.glob(pattern))) if d.is_dir() else 0


def count_lines(p: Path) -> int:
    return len(p.read_text().splitlines()) if p.is_file() else 0


# ----------------------------------------------------------------------------- reading a run back

def _table_rows(files: list[Path], drop: tuple[str, ...] = ()) -> list[tuple]:
    rows = []
    for f in files:
        for r in pq.read_table(f).to_pylist():
            rows.append(tuple((k, _hashable(v)) for k, v in sorted(r.items()) if k not in drop))
    return sorted(rows)


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v


def _steps(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        m = json.loads(line)
        out.append({k: v for k, v in m.items() if k not in TIMING_KEYS and not k.endswith("_seconds")})
    return out


def _tensors(ckpt: Path) -> dict[str, str]:
    from safetensors.numpy import load_file

    return {k: hashlib.sha256(v.tobytes()).hexdigest()[:16] for k, v in sorted(load_file(ckpt / "model.safetensors").items())}


def outputs(run_dir: Path) -> dict:
    """What the run computed, keyed by what it is (see the module docstring)."""
    run_dir = Path(run_dir)
    out: dict = {}
    bdir = run_dir / "buffer"
    for split_dir in sorted({p.parent for p in bdir.rglob("shard-*.parquet")}):
        out[f"buffer/{split_dir.relative_to(bdir)}"] = _table_rows(sorted(split_dir.glob("shard-*.parquet")))
    for pdir in sorted(run_dir.glob("phase-*")):
        idir = pdir / "influence"
        if idir.is_dir():
            out[f"{pdir.name}/influence"] = _table_rows(sorted((idir / "train").glob("shard-*.parquet")))
            vt = idir / "val_targets.json"
            if vt.is_file():
                out[f"{pdir.name}/val_targets"] = json.loads(vt.read_text())
        if (pdir / "selection.parquet").is_file():
            out[f"{pdir.name}/selection"] = _table_rows([pdir / "selection.parquet"])
        if (pdir / "train_metrics.jsonl").is_file():
            out[f"{pdir.name}/steps"] = _steps(pdir / "train_metrics.jsonl")
        if (pdir / "eval.jsonl").is_file():
            out[f"{pdir.name}/eval"] = [json.loads(x) for x in (pdir / "eval.jsonl").read_text().splitlines()]
        if (pdir / "checkpoint" / "model.safetensors").is_file():
            out[f"{pdir.name}/checkpoint"] = _tensors(pdir / "checkpoint")
    return out


def differences(a: dict, b: dict) -> list[str]:
    """Where outputs A and B differ: a missing key, or the first differing entry of a key."""
    diffs = []
    for k in sorted(set(a) | set(b)):
        if k not in a or k not in b:
            diffs.append(f"{k}: only in {'the first' if k in a else 'the second'}")
        elif a[k] != b[k]:
            x, y = a[k], b[k]
            if isinstance(x, list) and isinstance(y, list):
                i = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
                diffs.append(f"{k}: {len(x)} vs {len(y)} entries, first difference at {i}: "
                             f"{str(x[i] if i < len(x) else None)[:300]} vs {str(y[i] if i < len(y) else None)[:300]}")
            elif isinstance(x, dict) and isinstance(y, dict):
                ks = [j for j in sorted(set(x) | set(y)) if x.get(j) != y.get(j)]
                diffs.append(f"{k}: {len(ks)} entries differ, first {ks[0]}: {str(x.get(ks[0]))[:200]} vs {str(y.get(ks[0]))[:200]}")
            else:
                diffs.append(f"{k}: {str(x)[:200]} vs {str(y)[:200]}")
    return diffs


def check_whole(run_dir: Path, damaged: int = 0) -> None:
    """What every finished run must hold however it got there: every training prompt once in the
    buffer (K samples) and in the influence store, one selection row per prompt, steps 0..E once,
    and DAMAGED shards set aside on resume (no whole shard is ever taken for a damaged one)."""
    run_dir = Path(run_dir)
    ids = [r["prompt_id"] for p in sorted((run_dir / "buffer" / "train").glob("shard-*.parquet"))
           for r in pq.read_table(p, columns=["prompt_id", "sample_index"]).to_pylist()]
    k = len(ids) // NUM_PROMPTS
    assert sorted(ids) == sorted(list(range(NUM_PROMPTS)) * k), "the buffer lost or repeated a trajectory"
    inf = [r["prompt_id"] for p in sorted((run_dir / "phase-0" / "influence" / "train").glob("shard-*.parquet"))
           for r in pq.read_table(p, columns=["prompt_id"]).to_pylist()]
    assert sorted(inf) == list(range(NUM_PROMPTS)), "an influence row is missing or repeated"
    sel = pq.read_table(run_dir / "phase-0" / "selection.parquet").to_pylist()
    assert sorted(r["prompt_id"] for r in sel) == list(range(NUM_PROMPTS))
    steps = [json.loads(x)["step"] for x in (run_dir / "phase-0" / "train_metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(STEPS + 1)), f"steps logged {steps}"
    assert not list(run_dir.rglob(".*.tmp")) and not list(run_dir.rglob("*.partial")), "half-written files left"
    assert len(list(run_dir.rglob(".*.damaged"))) == damaged, sorted(run_dir.rglob(".*.damaged"))
