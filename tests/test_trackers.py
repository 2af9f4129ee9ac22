"""run.trackers: TensorBoard's event files read back with TensorBoard's own reader, W&B's offline
run file read back record by record; the real loop's tracker output is checked in
test_loop.py::test_ray_job_submit_to_local_head."""

import json
import struct
import time
from pathlib import Path

import pytest

from cropi.config import ConfigError, load_config
from cropi.trackers import Trackers, selection_scalars, step_scalars

STEPS = [{"phase": 0, "step": 0, "wall_time": 1.0, "val_pass@1/add": 0.25},
         {"phase": 0, "step": 1, "wall_time": 2.0, "reward_mean": 0.5, "loss": -0.1, "skipped_step": 0},
         {"phase": 1, "step": 1, "wall_time": 3.0, "reward_mean": 0.75, "loss": -0.2, "val_pass@1/add": 0.5}]
SUMMARY = {"pool_size": 96, "eligible": 40, "zero_grad": 56, "selected": 24,
           "composition": {"family": {"add": {"selected_frac": 0.75, "pool_frac": 0.5},
                                      "mul": {"selected_frac": 0.25, "pool_frac": 0.5}}}}


def read_tensorboard(log_dir: Path):
    """({tag: [(step, value)]}, {image tag: count}) with TensorBoard's EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]}
    return scalars, {t: len(acc.Images(t)) for t in tags["images"]}


def read_wandb_offline(run_dir: Path, sessions: int, wait_s: float = 60.0) -> list:
    """Every record of the offline runs under RUN_DIR/wandb (LevelDB-log framing: 32 KiB blocks of
    [crc32, length, type] chunks after a 7-byte header), as wandb protobuf Records. `run.finish()`
    can return before W&B's service has written the last records, so this waits until SESSIONS
    files each end with their exit record."""
    deadline = time.monotonic() + wait_s
    while True:
        files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
        per_file = [_wandb_records(f) for f in files]
        done = [recs for recs in per_file if recs and recs[-1].WhichOneof("record_type") == "exit"]
        if len(done) == sessions == len(files) or time.monotonic() > deadline:
            assert len(done) == sessions == len(files), f"{len(files)} run files, {len(done)} complete"
            return [r for recs in per_file for r in recs]
        time.sleep(0.2)


def _wandb_records(f: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    records = []
    raw, pos, buf = f.read_bytes(), 7, b""
    if raw[:4] != b":W&B":
        return records
    while pos + 7 <= len(raw):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if n == 0 and kind == 0:
            pos += left
            continue
        if pos + 7 + n > len(raw):  # a record still being written
            break
        data, pos = raw[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):
            data, buf = buf + data, b""
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(data)
            records.append(rec)
        else:
            buf += data
    return records


def _png(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(2, 1))
    plt.plot([0, 1], [0, 1])
    fig.savefig(path)
    plt.close(fig)
    return path


def _drive(cfg, run_dir: Path) -> None:
    (run_dir / "report").mkdir(parents=True, exist_ok=True)
    _png(run_dir / "report" / "validation.png")
    t = Trackers(cfg, run_dir)
    for m in STEPS:
        t.on_step(m)
    t.on_selection(1, SUMMARY)
    t.on_report(run_dir / "report", cfg.run.num_phases)
    t.close()


def test_scalars_from_metrics():
    assert step_scalars(STEPS[2]) == {"train/reward_mean": 0.75, "train/loss": -0.2, "val/pass@1/add": 0.5}
    assert selection_scalars(SUMMARY)["selection/family_frac/add"] == 0.75
    assert selection_scalars(SUMMARY)["selection/selected"] == 24.0


def test_tensorboard_event_files(tmp_path):
    cfg = load_config(None, ["run.trackers=[tensorboard]", "trainer.steps_per_phase=5", "run.num_phases=2"])
    _drive(cfg, tmp_path)
    scalars, images = read_tensorboard(tmp_path / "tensorboard")
    assert scalars["train/reward_mean"] == [(1, 0.5), (6, 0.75)]  # global step = phase * 5 + step
    assert scalars["val/pass@1/add"] == [(0, 0.25), (6, 0.5)]
    assert scalars["selection/family_frac/add"] == [(5, 0.75)]
    assert images == {"report/validation": 1}


def test_wandb_offline_run_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config(None, ["run.trackers=[wandb]", "trainer.steps_per_phase=5", "run.wandb_project=cropi-test"])
    _drive(cfg, tmp_path)
    # W&B names an offline run's folder by the start time to the second: a resume in the same second
    # would overwrite the first session's file (no real resume is that quick), so wait for the next one.
    t0 = int(time.time())
    while int(time.time()) == t0:
        time.sleep(0.05)
    _drive(cfg, tmp_path)  # a resumed run: the same W&B run id
    recs = read_wandb_offline(tmp_path, sessions=2)
    runs = {(r.run.run_id, r.run.project) for r in recs if r.WhichOneof("record_type") == "run"}
    assert len(runs) == 1 and next(iter(runs))[1] == "cropi-test"
    hist = [{(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            for r in recs if r.WhichOneof("record_type") == "history"]
    rewards = [(h["global_step"], h["train/reward_mean"]) for h in hist if "train/reward_mean" in h]
    assert rewards == [(1, 0.5), (6, 0.75)] * 2
    assert any(h.get("selection/selected") == 24 for h in hist)
    images = [h for h in hist if h.get("report/validation/_type") == "image-file"]
    assert images and images[0]["report/validation/format"] == "png"


def test_unknown_tracker_refused():
    with pytest.raises(ConfigError, match="run.trackers"):
        load_config(None, ["run.trackers=[mlflow]"])
    with pytest.raises(ConfigError, match="run.trackers"):
        load_config(None, ["run.trackers=[tensorboard, tensorboard]"])
