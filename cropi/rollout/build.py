"""`cropi rollout`: build the offline buffer with N vLLM BufferWriters, resuming what is done."""

from __future__ import annotations

import shutil
from pathlib import Path

from cropi.data.dataset import PromptRow
from cropi.data.rewards import load_reward
from cropi.data.suite import load_data, targeted
from cropi.errors import CropiError
from cropi.model.loading import check_model_dir, load_tokenizer
from cropi.store.buffer import ShardSpec, claim_buffer, read_manifest, summarise, write_manifest
from cropi.store.files import remove_stale_tmp, shards_to_write
from cropi.store.paths import RunPaths
from cropi.ray_utils import check_device, ray_session


def buffer_shards(cfg, train: list[PromptRow], val: dict[str, list[PromptRow]]) -> list[ShardSpec]:
    if not train:
        raise CropiError("the training prompt list is empty: nothing to roll out (check data.train_path)")
    for name, rows in val.items():
        if not rows:
            raise CropiError(f"validation set {name!r} is empty: nothing to roll out")
    size = cfg.rollout.shard_size
    specs = []
    for split, rows, k in [("train", train, cfg.rollout.k_train)] + [
            (f"val/{name}", rows, cfg.rollout.k_val) for name, rows in val.items()]:
        for i in range(0, len(rows), size):
            specs.append(ShardSpec(split, i // size, rows[i:i + size], k))
    return specs


def build_buffer(cfg, progress: bool = True, log=print, data: tuple | None = None) -> dict:
    """Build (or finish) RUN_DIR/buffer; returns the completed manifest. Shards already written
    are checked (footer, row count): a damaged one is rolled out again while the buffer is being
    built, and refused once the buffer is complete (cropi.store.files.shards_to_write).
    `data`: the (train, val) of cropi.data.suite.load_data, from a caller that loaded them and
    checked the device and model directory (the loop); without it this function does both."""

    if data is None:
        check_device(cfg)
        check_model_dir(cfg.model.path)
        data = load_data(cfg)
    load_tokenizer(cfg.model.path)  # fail here, not inside an actor, on a broken checkpoint
    load_reward(cfg.data)
    train, val = data
    specs = buffer_shards(cfg, train, targeted(cfg, val))
    bdir = RunPaths.of(cfg).buffer
    fresh = not (bdir / "manifest.json").is_file()
    claim_buffer(cfg, specs)
    try:
        _build(cfg, specs, bdir, progress, log)
    except CropiError:
        if fresh and not list(bdir.rglob("shard-*.parquet")):
            shutil.rmtree(bdir, ignore_errors=True)  # bad input: leave nothing behind
            if bdir.parent.is_dir() and not any(bdir.parent.iterdir()):
                bdir.parent.rmdir()
        raise
    manifest = read_manifest(bdir)
    if not manifest.get("complete"):
        remove_stale_tmp(bdir)  # left by a worker killed mid-write (Ray restarted it and redid the shard)
        manifest.update(summarise(bdir), complete=True)
        write_manifest(bdir, manifest)
    return manifest


def _build(cfg, specs: list[ShardSpec], bdir: Path, progress: bool, log) -> None:
    from tqdm import tqdm

    from cropi.rollout.writer import write_shards

    complete = bool((read_manifest(bdir) or {}).get("complete"))
    todo = shards_to_write(specs, lambda s: bdir / s.relpath, lambda s: s.num_trajectories, log, "buffer", complete)
    if not todo:
        return
    total = sum(len(s.rows) for s in specs)
    with ray_session(cfg), tqdm(total=total, initial=total - sum(len(s.rows) for s in todo), desc="buffer prompts",
                                unit="prompt", disable=not progress) as bar:
        write_shards(cfg, str(Path(cfg.model.path).resolve()), [(s, bdir / s.relpath) for s in todo], "buffer",
                     on_done=lambda job, _: bar.update(len(job[0].rows)))
