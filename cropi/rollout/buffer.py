"""The offline buffer on disk: layout, schema, shard plan, manifest, and reading it back.

    RUN_DIR/buffer/manifest.json                 config hash, model, counts, schema version
    RUN_DIR/buffer/train/shard-00000.parquet     one row per trajectory
    RUN_DIR/buffer/val/<set>/shard-00000.parquet

A shard is written under a temporary name and renamed when complete, so a shard file that
exists is whole; a rerun skips those and redoes the rest. A buffer whose manifest has another
config hash is refused rather than mixed.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cropi.config import Config
from cropi.data.dataset import PromptRow, atomic_write_text
from cropi.errors import CropiError

SCHEMA_VERSION = 1

SCHEMA = pa.schema([
    ("split", pa.string()),            # "train" or "val/<set>"
    ("prompt_id", pa.int64()),         # row of the prompt in its dataset file
    ("sample_index", pa.int32()),      # 0..K-1 within the prompt's group
    ("data_source", pa.string()),
    ("family", pa.string()),
    ("prompt_ids", pa.list_(pa.int32())),      # prompt tokens, BOS included
    ("response_ids", pa.list_(pa.int32())),    # generated tokens, EOS included when produced
    ("behavior_logp", pa.list_(pa.float32())), # log beta per response token (HF recompute, else vLLM)
    ("vllm_logp", pa.list_(pa.float32())),     # vLLM's log-prob of each sampled token
    ("cumulative_logprob", pa.float64()),       # vLLM's sum over the response
    ("response_text", pa.string()),
    ("finish_reason", pa.string()),
    ("reward", pa.float32()),
    ("group_mean", pa.float32()),
    ("group_std", pa.float32()),
    ("advantage", pa.float32()),       # (reward - group_mean) / (group_std + eps)
])


@dataclass
class ShardSpec:
    split: str
    index: int
    rows: list[PromptRow]
    k: int

    @property
    def relpath(self) -> str:
        return f"{self.split}/shard-{self.index:05d}.parquet"


def buffer_dir(cfg: Config) -> Path:
    return Path(cfg.run.dir) / "buffer"


def buffer_hash(cfg: Config) -> str:
    """What the buffer's content depends on (not worker counts or resources)."""
    r = cfg.rollout
    return stable_hash({
        "data": cfg.section_hash("data"), "model": str(Path(cfg.model.path).resolve()), "dtype": cfg.model.dtype,
        "seed": cfg.run.seed, "k_train": r.k_train, "k_val": r.k_val, "temperature": r.temperature,
        "top_p": r.top_p, "max_new_tokens": r.max_new_tokens, "hf_recompute": r.hf_recompute,
        "shard_size": r.shard_size, "schema": SCHEMA_VERSION,
    })


def stable_hash(obj) -> str:
    """Short sha256 of a JSON-able object (keys sorted): what an artifact was built from."""
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def prompt_seed(run_seed: int, split: str, prompt_id: int) -> int:
    """Sampling seed of one prompt's group: independent of sharding and worker count."""
    return (run_seed * 1_000_003 + zlib.crc32(split.encode()) * 7919 + prompt_id) % (2**31 - 1)


def plan_shards(cfg: Config, train: list[PromptRow], val: dict[str, list[PromptRow]]) -> list[ShardSpec]:
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


def read_manifest(bdir: Path) -> dict | None:
    p = bdir / "manifest.json"
    return json.loads(p.read_text()) if p.is_file() else None


def write_json_atomic(path: Path, obj) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True), path)


def claim_buffer(cfg: Config, specs: list[ShardSpec]) -> Path:
    """Create or re-open the buffer directory; refuse one built with another config."""
    bdir = buffer_dir(cfg)
    want = buffer_hash(cfg)
    manifest = read_manifest(bdir)
    if manifest is not None and manifest.get("config_hash") != want:
        raise CropiError(f"buffer {bdir} was built with a different config (hash {manifest.get('config_hash')} "
                         f"!= {want}); use another run.dir or delete {bdir}")
    if manifest is None:
        splits: dict[str, dict] = {}
        for s in specs:
            d = splits.setdefault(s.split, {"num_prompts": 0, "k": s.k, "num_shards": 0})
            d["num_prompts"] += len(s.rows)
            d["num_shards"] += 1
        write_json_atomic(bdir / "manifest.json", {
            "schema_version": SCHEMA_VERSION, "config_hash": want, "model_path": str(Path(cfg.model.path).resolve()),
            "splits": splits, "complete": False,
        })
    for stale in bdir.rglob(".*.tmp"):  # half-written files of a run that died
        stale.unlink(missing_ok=True)
    return bdir


def read_split(bdir: Path, split: str, columns: list[str] | None = None) -> pa.Table:
    """All trajectories of one split ("train" or "val/<set>"), shards in order."""
    files = sorted((bdir / split).glob("shard-*.parquet"))
    if not files:
        raise CropiError(f"buffer {bdir} has no shards for split {split!r}")
    return pa.concat_tables([pq.read_table(f, columns=columns) for f in files])


def summarise(bdir: Path) -> dict:
    """Counts and log-prob mismatch over every shard, for the manifest."""
    import numpy as np

    manifest = read_manifest(bdir) or {}
    out: dict = {"splits": {}, "logprob_mismatch": {}}
    diffs_mean, diffs_max, n_tok = 0.0, 0.0, 0
    for split, info in manifest.get("splits", {}).items():
        t = read_split(bdir, split, ["prompt_id", "reward", "group_std", "behavior_logp", "vllm_logp", "response_ids"])
        ids = t.column("prompt_id").to_numpy()
        std = t.column("group_std").to_numpy()
        zero = len(set(ids[std == 0].tolist()))
        ntraj = t.num_rows
        b = np.concatenate([np.asarray(x, dtype=np.float64) for x in t.column("behavior_logp").to_pylist()] or [[]])
        v = np.concatenate([np.asarray(x, dtype=np.float64) for x in t.column("vllm_logp").to_pylist()] or [[]])
        if len(b):
            d = np.abs(b - v)
            diffs_mean += d.sum()
            diffs_max = max(diffs_max, float(d.max()))
            n_tok += len(d)
        out["splits"][split] = {
            **info, "num_trajectories": ntraj, "num_prompts_present": len(set(ids.tolist())),
            "zero_advantage_prompts": zero, "mean_reward": float(t.column("reward").to_numpy().mean()),
            "num_response_tokens": int(sum(len(x) for x in t.column("response_ids").to_pylist())),
        }
    out["logprob_mismatch"] = {"mean_abs": diffs_mean / max(n_tok, 1), "max_abs": diffs_max, "num_tokens": n_tok}
    return out
