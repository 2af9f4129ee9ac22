"""Fake influence output for tests and benchmarks: the gradient actors' layout
(cropi.store.influence), written through the same writers from numpy arrays, so the selector
can be tested without a model.

`aligned_gradients` makes gradients with a known answer: each label (family) has a random
unit direction d_f in R^k; a prompt of family f gets g = signal * d_f + noise * e, e ~ N(0, I/k)
(so ||e|| ~ 1). For large k the directions are nearly orthogonal, so a family-f prompt has a
cosine of about signal / sqrt(signal^2 + noise^2) with the target of a validation set drawn
from family f, and about 0 with the others.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from cropi.store import influence as store


def write_manifest(influence_dir: str | Path, mode: str, sets: list[str], num_train_shards: int,
                   proj_dim: int | None = None, **extra) -> Path:
    return store.write_manifest(influence_dir, mode, sets, num_train_shards, proj_dim, **extra)


def grad_table(ids, zero_grad, grads: np.ndarray, dtype: str = "float16") -> pa.Table:
    """prompt_id, zero_grad, grad fixed_size_list<dtype>[k] from arrays [M], [M], [M, k]."""
    return store.shard_table(ids, zero_grad, grad=grads, grad_dtype=dtype)


def write_train_shard(influence_dir: str | Path, index: int, table: pa.Table) -> Path:
    return store.write_shard(table, store.train_shard_path(influence_dir, index))


def write_val_set(influence_dir: str | Path, name: str, ids, zero_grad, grads, dtype: str = "float16") -> Path:
    return store.write_shard(grad_table(ids, zero_grad, grads, dtype), store.val_shard_path(influence_dir, name))


def _shards(n: int, shard_size: int) -> list[slice]:
    return [slice(i * shard_size, (i + 1) * shard_size) for i in range(max(1, -(-n // shard_size)))]


def write_projected(influence_dir: str | Path, train_ids, train_zero, train_grads: np.ndarray,
                    val: dict[str, tuple], shard_size: int, dtype: str = "float16") -> Path:
    """A whole projected-mode directory; `val` maps set -> (ids, zero_grad, grads)."""
    shards = _shards(len(train_ids), shard_size)
    for i, sl in enumerate(shards):
        write_train_shard(influence_dir, i, grad_table(train_ids[sl], train_zero[sl], train_grads[sl], dtype))
    for name, (ids, zero, grads) in val.items():
        write_val_set(influence_dir, name, ids, zero, grads, dtype)
    write_manifest(influence_dir, "projected", list(val), len(shards), proj_dim=int(train_grads.shape[1]))
    return Path(influence_dir)


def write_exact(influence_dir: str | Path, train_ids, train_zero, norms, dots: np.ndarray,
                val_targets: dict[str, dict], shard_size: int) -> Path:
    """A whole exact-mode directory: dots [N, S] in the order of `val_targets`' keys."""
    sets = list(val_targets)
    shards = _shards(len(train_ids), shard_size)
    for i, sl in enumerate(shards):
        table = store.shard_table(train_ids[sl], train_zero[sl], norm=norms[sl],
                                  dots={s: dots[sl, j] for j, s in enumerate(sets)})
        write_train_shard(influence_dir, i, table)
    store.write_val_targets(influence_dir, val_targets)
    write_manifest(influence_dir, "exact", sets, len(shards))
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
