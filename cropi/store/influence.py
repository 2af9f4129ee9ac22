"""One phase's influence output on disk: the gradient actors write it, the selector reads it.

    influence/plan.json          hash of what it is computed from (config sections, checkpoint, buffer)
    influence/manifest.json      written last: {"mode": "projected"|"exact", "sets": [...], "proj_dim": k,
                                  "num_train_shards": n, drift and counts ...}
    influence/train/shard-00000.parquet ... shard-{n-1}   one per buffer train shard, one row per prompt:
        prompt_id int64, zero_grad bool, [kl float64, num_tokens int64], and
        projected: grad fixed_size_list<float16|float32>[k]
        exact:     norm float64, dot__<set> float64 per set
    influence/val/<set>/shard-00000.parquet   (projected) prompt_id, zero_grad, grad: every validation prompt
    influence/val_targets.json                (exact) {set: {"norm": ||v_j||, "num_prompts": n, "prompt_ids": [...]}}

Training shards are read in record batches of a bounded number of rows, so memory follows the
batch, not the pool. Validation sets are read whole: they are small (hundreds of prompts).
Shards are written with `use_dictionary=False`: pyarrow's default tries dictionary encoding
first, which on float gradients only costs reading time (benchmarks/selection_pool.py).
Every problem raises `CropiError` naming the file, column or set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from cropi.errors import CropiError
from cropi.store import records
from cropi.store.files import write_table
from cropi.store.paths import SHARD_GLOB, shard_name

MODES = ("projected", "exact")
# float64 working set per training batch (k = 4096: 512 rows); smaller batches cost no speed
# and bound peak memory (benchmarks/selection_pool.py).
BATCH_BYTES = 16 << 20


def train_shard_path(influence_dir: str | Path, name_or_index) -> Path:
    name = shard_name(name_or_index) if isinstance(name_or_index, int) else name_or_index
    return Path(influence_dir) / "train" / name


def val_shard_path(influence_dir: str | Path, set_name: str) -> Path:
    return Path(influence_dir) / "val" / set_name / shard_name(0)


def val_targets_path(influence_dir: str | Path) -> Path:
    return Path(influence_dir) / "val_targets.json"


def plan_path(influence_dir: str | Path) -> Path:
    return Path(influence_dir) / "plan.json"


def manifest_path(influence_dir: str | Path) -> Path:
    return Path(influence_dir) / "manifest.json"


# ----------------------------------------------------------------------------- writing

def shard_table(prompt_id, zero_grad, *, grad: np.ndarray | None = None, norm=None, dots: dict | None = None,
                kl=None, num_tokens=None, grad_dtype: str = "float32") -> pa.Table:
    """One influence shard from per-prompt arrays [M] (grad [M, k]; dots {set: [M]})."""
    cols = {"prompt_id": pa.array(np.asarray(prompt_id, np.int64)), "zero_grad": pa.array(np.asarray(zero_grad, bool))}
    if kl is not None:
        cols["kl"] = pa.array(np.asarray(kl, np.float64))
    if num_tokens is not None:
        cols["num_tokens"] = pa.array(np.asarray(num_tokens, np.int64))
    if norm is not None:
        cols["norm"] = pa.array(np.asarray(norm, np.float64))
    for s, d in (dots or {}).items():
        cols[f"dot__{s}"] = pa.array(np.asarray(d, np.float64))
    if grad is not None:
        g = np.ascontiguousarray(grad, dtype=np.dtype(grad_dtype))  # [M, k]
        cols["grad"] = pa.FixedSizeListArray.from_arrays(pa.array(g.reshape(-1)), g.shape[1])
    return pa.table(cols)


def expected_rows(buffer_shard: str | Path, k: int) -> int:
    """Rows of the influence shard that scores BUFFER_SHARD: one per prompt, K trajectories each
    (read from the Parquet footer only)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(buffer_shard).metadata.num_rows // k


def write_shard(table: pa.Table, path: str | Path) -> Path:
    return write_table(table, path, use_dictionary=False)


def write_manifest(influence_dir: str | Path, mode: str, sets: list[str], num_train_shards: int,
                   proj_dim: int | None = None, **extra) -> Path:
    body = {"mode": mode, "sets": list(sets), "proj_dim": proj_dim, "num_train_shards": num_train_shards, **extra}
    return records.write(records.INFLUENCE_MANIFEST, body, manifest_path(influence_dir))


def write_val_targets(influence_dir: str | Path, targets: dict[str, dict]) -> Path:
    return records.write(records.VAL_TARGETS, targets, val_targets_path(influence_dir))


# ----------------------------------------------------------------------------- reading

@dataclass
class Manifest:
    dir: Path
    mode: str
    sets: list[str]
    proj_dim: int | None
    num_train_shards: int
    raw: dict = field(default_factory=dict)

    def train_paths(self) -> list[Path]:
        return [train_shard_path(self.dir, i) for i in range(self.num_train_shards)]


def read_manifest(influence_dir: str | Path) -> Manifest:
    d = Path(influence_dir)
    path = manifest_path(d)
    raw = records.read(records.INFLUENCE_MANIFEST, path)
    mode, sets, n = raw.get("mode"), raw.get("sets"), raw.get("num_train_shards")
    if mode not in MODES:
        raise CropiError(f"{path}: field 'mode' must be one of {list(MODES)}, got {mode!r}")
    if not isinstance(sets, list) or not sets or not all(isinstance(s, str) and s for s in sets):
        raise CropiError(f"{path}: field 'sets' must be a non-empty list of set names, got {sets!r}")
    if len(set(sets)) != len(sets):
        raise CropiError(f"{path}: field 'sets' names a set twice: {sets}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise CropiError(f"{path}: field 'num_train_shards' must be an int >= 1, got {n!r}")
    k = raw.get("proj_dim")
    if mode == "projected" and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise CropiError(f"{path}: field 'proj_dim' must be an int >= 1 in projected mode, got {k!r}")
    m = Manifest(d, mode, list(sets), k if mode == "projected" else None, n, raw)
    missing = [str(p) for p in m.train_paths() if not p.is_file()]
    if missing:
        raise CropiError(f"training shard {missing[0]} listed by {path} (num_train_shards={n}) does not exist"
                         + (f" ({len(missing)} missing in all)" if len(missing) > 1 else ""))
    extra = sorted(set((d / "train").glob(SHARD_GLOB)) - set(m.train_paths()))
    if extra:
        raise CropiError(f"training shard {extra[0]} is not listed by {path} (num_train_shards={n}); "
                         "a leftover from another run?")
    return m


def _open(path: Path, required: dict[str, str]):
    """Open a shard and check its columns; `required` maps column -> a type description."""
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise CropiError(f"{path}: not a readable Parquet file ({e})") from None
    names = set(f.schema_arrow.names)
    for col, what in required.items():
        if col not in names:
            raise CropiError(f"{path}: missing column {col!r} ({what})")
    return f


def _grad_matrix(arr: pa.Array, k: int, where: str) -> np.ndarray:
    """fixed_size_list<float>[k] column -> numpy [B, k] (zero-copy for the values when possible)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    t = arr.type
    if not pa.types.is_fixed_size_list(t) or not pa.types.is_floating(t.value_type):
        raise CropiError(f"{where}: column 'grad' must be fixed_size_list<float16|float32>, got {t}")
    if t.list_size != k:
        raise CropiError(f"{where}: column 'grad' has width {t.list_size}, manifest proj_dim is {k}")
    if arr.null_count:
        raise CropiError(f"{where}: column 'grad' has {arr.null_count} null rows")
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), k)


def _ids_and_flags(batch, where: str) -> tuple[np.ndarray, np.ndarray]:
    ids, zero = batch.column("prompt_id"), batch.column("zero_grad")
    if not pa.types.is_integer(ids.type) or ids.null_count:
        raise CropiError(f"{where}: column 'prompt_id' must be non-null integers, got {ids.type}")
    if not pa.types.is_boolean(zero.type) or zero.null_count:
        raise CropiError(f"{where}: column 'zero_grad' must be non-null bool, got {zero.type}")
    return ids.to_numpy().astype(np.int64), zero.to_numpy(zero_copy_only=False)


def read_val_set(m: Manifest, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A projected-mode validation set, sorted by prompt id: (ids [V], zero_grad [V], grads [V, k])."""
    vdir = m.dir / "val" / name
    paths = sorted(vdir.glob(SHARD_GLOB))
    if not paths:
        raise CropiError(f"validation set {name!r} is empty: no {SHARD_GLOB} under {vdir}")
    ids, zero, grads = [], [], []
    for p in paths:
        t = _open(p, {"prompt_id": "int64", "zero_grad": "bool", "grad": "fixed_size_list"}).read(
            columns=["prompt_id", "zero_grad", "grad"])
        i, z = _ids_and_flags(t, str(p))
        ids.append(i)
        zero.append(z)
        grads.append(_grad_matrix(t.column("grad"), m.proj_dim, str(p)))
    ids, zero, grads = np.concatenate(ids), np.concatenate(zero), np.concatenate(grads)
    if len(ids) == 0:
        raise CropiError(f"validation set {name!r} is empty: its shards under {vdir} hold no rows")
    if len(np.unique(ids)) != len(ids):
        raise CropiError(f"validation set {name!r}: a prompt_id appears twice under {vdir}")
    if not np.isfinite(grads).all():
        raise CropiError(f"validation set {name!r}: non-finite gradient values under {vdir}")
    order = np.argsort(ids, kind="stable")
    return ids[order], zero[order], grads[order]


def read_val_targets(m: Manifest) -> tuple[np.ndarray, dict]:
    """Exact mode: target norms [S] from val_targets.json, and per-set info."""
    path = val_targets_path(m.dir)
    raw = records.read(records.VAL_TARGETS, path)
    norms, info = [], {}
    for name in m.sets:
        entry = raw.get(name) if isinstance(raw, dict) else None
        if not isinstance(entry, dict):
            raise CropiError(f"{path}: no entry for validation set {name!r}")
        n, norm = entry.get("num_prompts"), entry.get("norm")
        if not isinstance(n, int) or n < 1:
            raise CropiError(f"validation set {name!r} is empty: {path} gives num_prompts={n!r}")
        if not isinstance(norm, (int, float)) or not math.isfinite(norm) or norm <= 0:
            raise CropiError(f"validation set {name!r}: {path} gives target norm {norm!r}; need a finite value > 0")
        norms.append(float(norm))
        info[name] = {"num_prompts": n, "num_used": entry.get("num_used", n), "target_norm": float(norm)}
    return np.asarray(norms), info


def default_batch_rows(m: Manifest) -> int:
    width = m.proj_dim if m.mode == "projected" else len(m.sets) + 1
    return max(1, BATCH_BYTES // (8 * width))


def iter_train_batches(path: Path, m: Manifest, batch_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray, tuple]]:
    """Yield (prompt_ids [B], zero_grad [B], payload) per record batch of one training shard;
    payload is (grads [B, k],) in projected mode and (norms [B], dots [B, S]) in exact mode."""
    if m.mode == "projected":
        cols = {"prompt_id": "int64", "zero_grad": "bool", "grad": "fixed_size_list"}
    else:
        cols = {"prompt_id": "int64", "zero_grad": "bool", "norm": "float64",
                **{f"dot__{s}": f"float64, <g, v> for set {s!r}" for s in m.sets}}
    f = _open(path, cols)
    for batch in f.iter_batches(batch_size=batch_rows, columns=list(cols)):
        ids, zero = _ids_and_flags(batch, str(path))
        if m.mode == "projected":
            yield ids, zero, (_grad_matrix(batch.column("grad"), m.proj_dim, str(path)),)
        else:
            norms = batch.column("norm").to_numpy(zero_copy_only=False).astype(np.float64)
            if (norms < 0).any():
                raise CropiError(f"{path}: column 'norm' holds a negative value ({norms.min()})")
            dots = np.stack([batch.column(f"dot__{s}").to_numpy(zero_copy_only=False) for s in m.sets],
                            axis=1).astype(np.float64)  # [B, S]
            yield ids, zero, (norms, dots)


def read_drift_columns(paths: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kl [N], num_tokens [N], zero_grad [N]) over the given training shards."""
    import pyarrow.parquet as pq

    parts = [pq.read_table(p, columns=["kl", "num_tokens", "zero_grad"]) for p in paths]
    t = pa.concat_tables(parts) if parts else None
    if t is None:
        return np.zeros(0), np.zeros(0), np.zeros(0, bool)
    return (t.column("kl").to_numpy(), t.column("num_tokens").to_numpy(),
            t.column("zero_grad").to_numpy(zero_copy_only=False))
