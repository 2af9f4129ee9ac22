"""Fake influence output for tests and benchmarks: the gradient actors' layout (see
`reader.py`), written from numpy arrays, so the selector can be tested without a model.

`aligned_gradients` makes gradients with a known answer: each label (family) has a random
unit direction d_f in R^k; a prompt of family f gets g = signal * d_f + noise * e, e ~ N(0, I/k)
(so ||e|| ~ 1). For large k the directions are nearly orthogonal, so a family-f prompt has a
cosine of about signal / sqrt(signal^2 + noise^2) with the target of a validation set drawn
from family f, and about 0 with the others.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def write_manifest(influence_dir: str | Path, mode: str, sets: list[str], num_train_shards: int,
                   proj_dim: int | None = None, **extra) -> Path:
    d = Path(influence_dir)
    d.mkdir(parents=True, exist_ok=True)
    body = {"mode": mode, "sets": list(sets), "proj_dim": proj_dim, "num_train_shards": num_train_shards, **extra}
    (d / "manifest.json").write_text(json.dumps(body, indent=2))
    return d / "manifest.json"


def grad_table(ids, zero_grad, grads: np.ndarray, dtype: str = "float16") -> pa.Table:
    """prompt_id, zero_grad, grad fixed_size_list<dtype>[k] from arrays [M], [M], [M, k]."""
    g = np.ascontiguousarray(grads, dtype=np.dtype(dtype))  # [M, k]
    return pa.table({"prompt_id": pa.array(np.asarray(ids, np.int64)),
                     "zero_grad": pa.array(np.asarray(zero_grad, bool)),
                     "grad": pa.FixedSizeListArray.from_arrays(pa.array(g.reshape(-1)), g.shape[1])})


def _write(table: pa.Table, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, use_dictionary=False)  # as the gradient actors should (see reader.py)
    return path


def write_train_shard(influence_dir: str | Path, index: int, table: pa.Table) -> Path:
    return _write(table, Path(influence_dir) / "train" / f"shard-{index:05d}.parquet")


def write_val_set(influence_dir: str | Path, name: str, ids, zero_grad, grads, dtype: str = "float16") -> Path:
    return _write(grad_table(ids, zero_grad, grads, dtype), Path(influence_dir) / "val" / name / "shard-00000.parquet")


def write_projected(influence_dir: str | Path, train_ids, train_zero, train_grads: np.ndarray,
                    val: dict[str, tuple], shard_size: int, dtype: str = "float16") -> Path:
    """A whole projected-mode directory; `val` maps set -> (ids, zero_grad, grads)."""
    n = len(train_ids)
    shards = max(1, -(-n // shard_size))
    for i in range(shards):
        sl = slice(i * shard_size, (i + 1) * shard_size)
        write_train_shard(influence_dir, i, grad_table(train_ids[sl], train_zero[sl], train_grads[sl], dtype))
    for name, (ids, zero, grads) in val.items():
        write_val_set(influence_dir, name, ids, zero, grads, dtype)
    write_manifest(influence_dir, "projected", list(val), shards, proj_dim=int(train_grads.shape[1]))
    return Path(influence_dir)


def write_exact(influence_dir: str | Path, train_ids, train_zero, norms, dots: np.ndarray,
                val_targets: dict[str, dict], shard_size: int) -> Path:
    """A whole exact-mode directory: dots [N, S] in the order of `val_targets`' keys."""
    sets = list(val_targets)
    n = len(train_ids)
    shards = max(1, -(-n // shard_size))
    for i in range(shards):
        sl = slice(i * shard_size, (i + 1) * shard_size)
        cols = {"prompt_id": pa.array(np.asarray(train_ids[sl], np.int64)),
                "zero_grad": pa.array(np.asarray(train_zero[sl], bool)),
                "norm": pa.array(np.asarray(norms[sl], np.float64))}
        cols.update({f"dot__{s}": pa.array(np.asarray(dots[sl, j], np.float64)) for j, s in enumerate(sets)})
        write_train_shard(influence_dir, i, pa.table(cols))
    (Path(influence_dir) / "val_targets.json").write_text(json.dumps(val_targets))
    write_manifest(influence_dir, "exact", sets, shards)
    return Path(influence_dir)


def family_directions(families: list[str], k: int, seed: int) -> dict[str, np.ndarray]:
    """A random unit vector in R^k per family, from seed + its index."""
    out = {}
    for i, f in enumerate(families):
        d = np.random.default_rng(seed + i).standard_normal(k)
        out[f] = d / np.linalg.norm(d)
    return out


def aligned_gradients(labels, directions: dict[str, np.ndarray], rng: np.random.Generator,
                      signal: float | np.ndarray = 1.0, noise: float = 1.0) -> np.ndarray:
    """g_i = signal * d_{label_i} + noise * e_i, e_i ~ N(0, I/k): float32 [M, k]. `signal` may
    be an array [M, 1] to spread the prompts' alignment."""
    k = len(next(iter(directions.values())))
    d = np.stack([directions[lab] for lab in labels]).astype(np.float32)  # [M, k]
    e = rng.standard_normal((len(labels), k), dtype=np.float32) / np.float32(np.sqrt(k))  # [M, k]
    return signal * d + noise * e
