"""The offline buffer, built by real vLLM engines inside Ray actors on the tiny model."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cropi.config import load_config
from cropi.data.rewards import exact_integer
from cropi.data.suite import load_data
from cropi.errors import CropiError
from cropi.rollout.build import buffer_shards
from cropi.store.buffer import read_split

pytestmark = pytest.mark.integration

SMALL = ["data.train_size=40", "data.val_size=6", "data.families=[add, mul]", "rollout.k_train=4",
         "rollout.k_val=6", "rollout.shard_size=10", "resources.local_num_cpus=2"]


def small_cfg(tmp_path, *extra):
    return load_config("configs/tiny-cpu.yaml", SMALL + [f"run.dir={tmp_path / 'run'}",
                                                         f"data.data_dir={tmp_path / 'tasks'}", *extra])


def test_buffer_with_two_workers_is_correct(tiny_model, tmp_path):
    from cropi.model.loading import load_tokenizer
    from cropi.rollout.build import build_buffer

    cfg = small_cfg(tmp_path, "resources.rollout.num_workers=2", "resources.rollout.num_cpus=1")
    manifest = build_buffer(cfg, progress=False)
    tok = load_tokenizer(tiny_model)
    pool, val = load_data(cfg)
    truth = {("train", r.prompt_id): r.ground_truth for r in pool}
    truth.update({(f"val/{n}", r.prompt_id): r.ground_truth for n, rows in val.items() for r in rows})
    assert manifest["complete"] and set(manifest["splits"]) == {"train", "val/add", "val/mul"}
    bdir = Path(cfg.run.dir) / "buffer"
    for split, n_prompts, k in [("train", 40, 4), ("val/add", 6, 6), ("val/mul", 6, 6)]:
        t = read_split(bdir, split).to_pylist()
        assert len(t) == n_prompts * k
        ids = [r["prompt_id"] for r in t]
        assert sorted(set(ids)) == list(range(n_prompts)) and all(ids.count(i) == k for i in set(ids))
        assert manifest["splits"][split]["num_trajectories"] == n_prompts * k
        groups = {}
        for r in t:
            # the reward is a re-evaluation of the stored text, which is the decoding of the stored ids
            assert r["reward"] == exact_integer(r["response_text"], truth[split, r["prompt_id"]])
            assert tok.decode(r["response_ids"], skip_special_tokens=True) == r["response_text"]
            lp, hf = np.array(r["vllm_logp"]), np.array(r["behavior_logp"])
            assert len(lp) == len(hf) == len(r["response_ids"]) >= 1
            assert np.isfinite(lp).all() and np.isfinite(hf).all() and (lp <= 0).all()
            assert math.isclose(lp.sum(), r["cumulative_logprob"], abs_tol=1e-4)
            assert np.abs(lp - hf).max() < 1e-3  # vLLM vs the HF forward the gradient engine uses
            groups.setdefault(r["prompt_id"], []).append(r)
        for g in groups.values():
            rewards = np.array([r["reward"] for r in g])
            adv = np.array([r["advantage"] for r in g])
            assert abs(adv.mean()) < 1e-5
            if rewards.std() == 0:
                assert (adv == 0).all()
            else:
                np.testing.assert_allclose(adv, (rewards - rewards.mean()) / (rewards.std() + 1e-6), atol=1e-5)
        zero = sum(1 for g in groups.values() if len({r["reward"] for r in g}) == 1)
        assert manifest["splits"][split]["zero_advantage_prompts"] == zero
    assert manifest["logprob_mismatch"]["max_abs"] < 1e-3
    # a rerun finds every shard complete and changes nothing
    before = {p: p.stat().st_mtime_ns for p in bdir.rglob("shard-*.parquet")}
    build_buffer(cfg, progress=False)
    assert before == {p: p.stat().st_mtime_ns for p in bdir.rglob("shard-*.parquet")}
    # the same run directory with another buffer config is refused, not mixed
    with pytest.raises(CropiError, match="different config"):
        build_buffer(small_cfg(tmp_path, "rollout.k_train=5"), progress=False)


def _worker_pids(root_pid: int):
    from tests.support.procs import actor_pids

    return actor_pids("BufferWriter", root_pid)


@pytest.mark.slow  # 100 s: `make test-all`; tests/faults kills a rollout worker too, CI's fault sample is
# test_weight_sync.py::test_engine_that_dies_fails_the_sync_naming_it
def test_killed_worker_then_rerun_completes_exactly_once(tiny_model, tmp_path):
    args = [sys.executable, "-m", "cropi.cli", "rollout", "configs/tiny-cpu.yaml",
            *[a for s in SMALL + [f"run.dir={tmp_path / 'run'}", f"data.data_dir={tmp_path / 'tasks'}",
                                  "resources.rollout.max_restarts=0", "rollout.shard_size=4"] for a in ("--set", s)]]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    train_dir = tmp_path / "run" / "buffer" / "train"
    deadline = time.time() + 180
    while time.time() < deadline and not list(train_dir.glob("shard-*.parquet")):
        time.sleep(0.2)
    assert list(train_dir.glob("shard-*.parquet")), "no shard was written in time"
    pids = _worker_pids(proc.pid)
    assert pids
    for pid in pids:
        os.kill(pid, 9)
    out, _ = proc.communicate(timeout=180)
    done_after_kill = len(list((tmp_path / "run" / "buffer").rglob("shard-*.parquet")))
    assert proc.returncode == 2 and "rerun the same command to resume" in out, out[-2000:]
    assert done_after_kill < 10 + 2 + 2  # 40/4 train shards + 6/4 -> 2 per val set: the kill did cut it short
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    bdir = tmp_path / "run" / "buffer"
    t = read_split(bdir, "train", ["prompt_id", "sample_index"]).to_pylist()
    keys = [(r["prompt_id"], r["sample_index"]) for r in t]
    assert len(keys) == len(set(keys)) == 40 * 4
    assert json.loads((bdir / "manifest.json").read_text())["complete"]
    assert not list(bdir.rglob("*.tmp"))


def test_bad_inputs_fail_clearly_and_write_nothing(tiny_model, tmp_path):
    from cropi.rollout.build import build_buffer

    with pytest.raises(CropiError, match="rollout.k_train"):
        small_cfg(tmp_path, "rollout.k_train=0")
    cfg = small_cfg(tmp_path, f"model.path={tmp_path / 'no-model'}")
    with pytest.raises(CropiError, match="no-model"):
        build_buffer(cfg, progress=False)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{")
    with pytest.raises(CropiError, match="not valid JSON"):
        build_buffer(small_cfg(tmp_path, f"model.path={tmp_path / 'broken'}"), progress=False)
    assert not (tmp_path / "run").exists()
    # a reward function that fails on a row: the error names it, and no buffer is left behind
    with pytest.raises(CropiError, match=r"reward function 'truediv' failed on train prompt \d+: TypeError"):
        build_buffer(small_cfg(tmp_path, "data.reward_fn=operator:truediv"), progress=False)
    assert not (tmp_path / "run" / "buffer").exists()
    with pytest.raises(CropiError, match="cannot import module 'no_such'"):
        build_buffer(small_cfg(tmp_path, "data.reward_fn=no_such:f"), progress=False)
    with pytest.raises(CropiError, match="training prompt list is empty"):
        buffer_shards(small_cfg(tmp_path), [], {})
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg = load_config("configs/tiny-cpu.yaml", ["data.synthetic=false", f"data.train_path={empty}",
                                                 f"data.val_paths={{a: {empty}}}", f"run.dir={tmp_path / 'run'}"])
    with pytest.raises(CropiError, match="empty.jsonl: dataset has no rows"):
        build_buffer(cfg, progress=False)
    assert not (tmp_path / "run").exists()
