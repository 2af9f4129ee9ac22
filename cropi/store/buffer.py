"""The offline buffer on disk: schema, shard names, manifest, and reading it back.

    RUN_DIR/buffer/manifest.json                 config hash, model, counts, schema version
    RUN_DIR/buffer/train/shard-00000.parquet     one row per trajectory
    RUN_DIR/buffer/val/<set>/shard-00000.parquet
    RUN_DIR/phase-M/refresh/shard-i.parquet      same schema (split "refresh/phase-M")

A shard is written under a temporary name and renamed when complete, so a shard file that
exists is whole; a rerun skips those and redoes the rest. A buffer whose manifest has another
config hash is refused rather than mixed. The hash covers what the trajectories depend on:
data, model, seed and the rollout section; never resources (worker counts, GPUs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cropi.config import BUFFER, flat_dict
from cropi.errors import CropiError
from cropi.hashing import stable_hash
from cropi.store import records
from cropi.store.files import remove_stale_tmp
from cropi.store.paths import SHARD_GLOB, RunPaths, shard_name

SCHEMA_VERSION = 1

SCHEMA = pa.schema([
    ("split", pa.string()),            # "train", "val/<set>" or "refresh/phase-M"
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

# what the influence engine reads of a shard
GRADIENT_COLUMNS = ["prompt_id", "prompt_ids", "response_ids", "behavior_logp", "advantage", "group_std"]


@dataclass
class ShardSpec:
    """One shard to roll out: `rows` (PromptRows) of `split`, K samples each."""
    split: str
    index: int
    rows: list
    k: int

    @property
    def num_trajectories(self) -> int:
        """Rows of the shard: K per prompt."""
        return len(self.rows) * self.k

    @property
    def relpath(self) -> str:
        return f"{self.split}/{shard_name(self.index)}"


def buffer_hash(cfg) -> str:
    """What the buffer's content depends on: the fields declared to feed it (cropi.config; the
    model by the content of its directory), and the file format's version."""
    return stable_hash({**cfg.artifact_inputs(BUFFER), "schema": SCHEMA_VERSION})


KEY_VERSION = 2  # manifests without "key_version" were keyed by _key_v1


def _key_v1(cfg) -> str:
    """The key of buffers written before the fields declared what they feed: hand-picked fields
    and the model by path. Still accepted, so a run begun then resumes (the inputs are the same)."""
    r = cfg.rollout
    data = {k.split(".", 1)[1]: v for k, v in flat_dict(cfg).items() if k.startswith("data.") and k != "data.reward_range"}
    return stable_hash({
        "data": stable_hash({"data": data}), "model": str(Path(cfg.model.path).resolve()), "dtype": cfg.model.dtype,
        "seed": cfg.run.seed, "k_train": r.k_train, "k_val": r.k_val, "temperature": r.temperature,
        "top_p": r.top_p, "max_new_tokens": r.max_new_tokens, "hf_recompute": r.hf_recompute,
        "shard_size": r.shard_size, "schema": SCHEMA_VERSION,
    })


def built_with(cfg, manifest: dict) -> bool:
    """Whether the buffer of this manifest was built from this config's buffer inputs."""
    have = manifest.get("config_hash")
    return have == buffer_hash(cfg) or ("key_version" not in manifest and have == _key_v1(cfg))


def read_manifest(bdir: Path) -> dict | None:
    return records.read_if(records.BUFFER_MANIFEST, Path(bdir) / "manifest.json")


def write_manifest(bdir: Path, manifest: dict) -> None:
    records.write(records.BUFFER_MANIFEST, manifest, Path(bdir) / "manifest.json")


def complete_manifest(cfg) -> tuple[Path, dict]:
    """(buffer dir, manifest) of a finished buffer; CropiError if there is none."""
    bdir = RunPaths.of(cfg).buffer
    man = read_manifest(bdir)
    if not man or not man.get("complete"):
        raise CropiError(f"buffer {bdir} is missing or incomplete: run `cropi rollout` first")
    return bdir, man


def val_sets(manifest: dict) -> list[str]:
    return [s.split("/", 1)[1] for s in manifest["splits"] if s.startswith("val/")]


def claim_buffer(cfg, specs: list[ShardSpec]) -> Path:
    """Create or re-open the buffer directory; refuse one built with another config."""
    bdir = RunPaths.of(cfg).buffer
    want = buffer_hash(cfg)
    manifest = read_manifest(bdir)
    if manifest is not None and not built_with(cfg, manifest):
        raise CropiError(f"buffer {bdir} was built with a different config (hash {manifest.get('config_hash')} "
                         f"!= {want}); use another run.dir or delete {bdir}")
    if manifest is None and any(bdir.rglob(SHARD_GLOB)):
        raise CropiError(f"buffer {bdir} holds shards but no manifest.json, so which config built them cannot be "
                         f"told; delete {bdir} to rebuild it (or restore its manifest.json)")
    if manifest is None:
        splits: dict[str, dict] = {}
        for s in specs:
            d = splits.setdefault(s.split, {"num_prompts": 0, "k": s.k, "num_shards": 0})
            d["num_prompts"] += len(s.rows)
            d["num_shards"] += 1
        write_manifest(bdir, {
            "key_version": KEY_VERSION, "config_hash": want, "model_path": str(Path(cfg.model.path).resolve()),
            "splits": splits, "complete": False,
        })
    remove_stale_tmp(bdir)  # half-written files of a run that died
    return bdir


def train_shards(bdir: Path) -> list[Path]:
    return sorted((Path(bdir) / "train").glob(SHARD_GLOB))


def prompt_reward_stats(bdir: Path) -> dict[int, tuple[float, float]]:
    """Training prompt id -> (pass rate: mean of its K rewards, their std) from the buffer."""
    t = read_split(bdir, "train", ["prompt_id", "reward", "group_std"])
    g = t.group_by("prompt_id").aggregate([("reward", "mean"), ("group_std", "max")])
    ids, means, stds = (g.column(c).to_pylist() for c in ("prompt_id", "reward_mean", "group_std_max"))
    return {int(i): (float(m), float(s)) for i, m, s in zip(ids, means, stds)}


def read_split(bdir: Path, split: str, columns: list[str] | None = None) -> pa.Table:
    """All trajectories of one split ("train" or "val/<set>"), shards in order."""
    files = sorted((Path(bdir) / split).glob(SHARD_GLOB))
    if not files:
        raise CropiError(f"buffer {bdir} has no shards for split {split!r}")
    return pa.concat_tables([pq.read_table(f, columns=columns) for f in files])


def read_rows(path: Path, columns: list[str] = GRADIENT_COLUMNS) -> list[dict]:
    return pq.read_table(path, columns=columns).to_pylist()


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
        b = np.concatenate([np.asarray(x, dtype=np.float64) for x in t.column("behavior_logp").to_pylist()] or [[]])
        v = np.concatenate([np.asarray(x, dtype=np.float64) for x in t.column("vllm_logp").to_pylist()] or [[]])
        if len(b):
            d = np.abs(b - v)
            diffs_mean += d.sum()
            diffs_max = max(diffs_max, float(d.max()))
            n_tok += len(d)
        out["splits"][split] = {
            **info, "num_trajectories": t.num_rows, "num_prompts_present": len(set(ids.tolist())),
            "zero_advantage_prompts": zero, "mean_reward": float(t.column("reward").to_numpy().mean()),
            "num_response_tokens": int(sum(len(x) for x in t.column("response_ids").to_pylist())),
        }
    out["logprob_mismatch"] = {"mean_abs": diffs_mean / max(n_tok, 1), "max_abs": diffs_max, "num_tokens": n_tok}
    return out
