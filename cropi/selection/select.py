"""The selector: one phase's influence output in, the phase's training subset out.

`run_selection` is a plain function (the Ray actor that runs it is a thin shell elsewhere):

1. check the config, the manifest and the previous selection before any heavy reading;
2. form the validation targets (projected: `scoring.val_target` over the stored validation
   gradients; exact: the norms the influence stage wrote);
3. stream the training shards one record batch at a time, keeping only the per-prompt scores
   [N, S] float64 (a pool of 10^6 prompts and 8 sets is 64 MB, whatever k is), and check that
   the shards' prompt ids are exactly the pool's, each once;
4. rank, fuse and keep the top alpha (`fusion.select_from_scores`);
5. write selection.parquet and selection_summary.json (cropi.store.selection: its format, and
   why a summary on disk always describes the table beside it); an error before step 5 writes
   nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from cropi.config import SelectionConfig, validate_section
from cropi.data.dataset import PromptRow
from cropi.errors import CropiError
from cropi.selection.fusion import select_from_scores
from cropi.selection.scoring import cosine_from_dots, projected_scores, val_target
from cropi.selection.summary import composition, jaccard, score_stats
from cropi.store import influence as store
from cropi.store.selection import SELECTION_FILE, read_selection, write_selection


def _pool_arrays(prompts: list[PromptRow]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prompt_ids, data_source, family) sorted by prompt_id; duplicate ids are an error."""
    if not prompts:
        raise CropiError("training pool is empty: no prompts to select from")
    ids = np.fromiter((p.prompt_id for p in prompts), np.int64, len(prompts))
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    dup = ids[1:][ids[1:] == ids[:-1]]
    if len(dup):
        raise CropiError(f"training pool lists prompt_id {int(dup[0])} more than once ({len(dup)} duplicates)")
    ds = np.array([prompts[i].data_source for i in order], dtype=object)
    fam = np.array([prompts[i].family for i in order], dtype=object)
    return ids, ds, fam


def previous_selected_ids(path: str | Path) -> np.ndarray:
    """Selected prompt ids of an earlier selection.parquet (or of the directory holding one)."""
    t = read_selection(path, ["prompt_id", "selected"])
    ids, sel = t.column("prompt_id").to_numpy(), t.column("selected").to_numpy(zero_copy_only=False)
    return ids[sel]


def load_projected_targets(m: store.Manifest, max_val_grads: int, seed: int) -> tuple[np.ndarray, dict]:
    """Targets [S, k] float64 and per-set info {set: {num_prompts, num_used, target_norm, prompt_ids}}."""
    targets, info = [], {}
    for name in m.sets:
        ids, zero, grads = store.read_val_set(m, name)
        v, chosen = val_target(ids, grads, zero, max_val_grads, seed, name)
        norm = float(np.linalg.norm(v))
        if len(chosen) == 0 or norm == 0:
            raise CropiError(f"validation set {name!r}: every one of its {len(ids)} prompts has a zero gradient; "
                             "no target to score against")
        targets.append(v)
        info[name] = {"num_prompts": int(len(ids)), "num_used": int(len(chosen)), "target_norm": norm,
                      "prompt_ids": chosen.tolist()}
    return np.stack(targets), info


def stream_scores(m: store.Manifest, pool_ids: np.ndarray, targets: np.ndarray | None,
                  target_norms: np.ndarray, batch_rows: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores [N, S] and eligibility [N] of every pool prompt (pool_ids sorted), from the
    training shards read batch by batch; and the number of rows read. Unknown, duplicate and
    missing prompt ids are collected over the whole pass and reported together."""
    n, s = len(pool_ids), len(m.sets)
    scores, eligible = np.zeros((n, s)), np.zeros(n, bool)
    first_shard = np.full(n, -1, np.int32)  # where each prompt was first seen
    unknown: list[str] = []
    dups: list[str] = []
    n_unknown = n_dup = rows = 0
    for si, path in enumerate(m.train_paths()):
        for ids, zero, payload in store.iter_train_batches(path, m, batch_rows):
            rows += len(ids)
            pos = np.minimum(np.searchsorted(pool_ids, ids), n - 1)
            known = pool_ids[pos] == ids
            if not known.all():
                n_unknown += int((~known).sum())
                unknown += [f"{i} ({path.name})" for i in ids[~known][: 3 - len(unknown)]]
                ids, zero, pos, payload = ids[known], zero[known], pos[known], tuple(a[known] for a in payload)
            if m.mode == "projected":
                sc, el = projected_scores(payload[0], zero, targets)  # [B, S], [B]
            else:
                sc, el = cosine_from_dots(payload[1], payload[0], zero, target_norms)
            bad = el & ~np.isfinite(sc).all(axis=1)
            if bad.any():
                raise CropiError(f"{path}: prompt_id {int(ids[bad][0])} has a non-finite gradient or dot "
                                 f"({int(bad.sum())} such rows in this batch)")
            # a prompt seen before (in an earlier batch, or earlier in this one) is a duplicate
            _, first_idx = np.unique(pos, return_index=True)
            repeat = np.ones(len(pos), bool)
            repeat[first_idx] = False
            repeat |= first_shard[pos] >= 0
            if repeat.any():
                n_dup += int(repeat.sum())
                for i, p in zip(ids[repeat][: 3 - len(dups)], pos[repeat]):
                    was = first_shard[p] if first_shard[p] >= 0 else si
                    dups.append(f"{i} (shard-{was:05d}.parquet and {path.name})")
            first_shard[pos[~repeat]] = si
            scores[pos], eligible[pos] = sc, el
    missing = np.flatnonzero(first_shard < 0)
    problems = []
    if n_unknown:
        problems.append(f"{n_unknown} prompt ids are not in the pool, e.g. {', '.join(unknown)}")
    if n_dup:
        problems.append(f"{n_dup} rows repeat a prompt id, e.g. {', '.join(dups)}")
    if len(missing):
        problems.append(f"{len(missing)} pool prompts have no row, e.g. prompt_id "
                        f"{', '.join(str(int(pool_ids[i])) for i in missing[:3])}")
    if problems:
        raise CropiError(f"training shards under {m.dir / 'train'} do not match the pool of {n} prompts: "
                         + "; ".join(problems))
    return scores, eligible, rows


def _selection_table(sets, ids, ds, fam, eligible, scores, res) -> pa.Table:
    cols = {"prompt_id": pa.array(ids, pa.int64()), "data_source": pa.array(ds.tolist(), pa.string()),
            "family": pa.array(fam.tolist(), pa.string()), "zero_grad": pa.array(~eligible)}
    for j, name in enumerate(sets):
        cols[f"score__{name}"] = pa.array(scores[:, j])
    for j, name in enumerate(sets):
        cols[f"rank__{name}"] = pa.array(res["ranks"][:, j])
    cols["fused"] = pa.array(res["fused"])
    cols["selected"] = pa.array(res["selected"])
    return pa.table(cols)


def run_selection(influence_dir: str | Path, prompts: list[PromptRow], cfg: SelectionConfig, seed: int,
                  out_dir: str | Path, previous_selection: str | Path | None = None, *,
                  batch_rows: int | None = None) -> dict:
    """Select this phase's subset; writes out_dir/selection.parquet and selection_summary.json
    and returns the summary. `batch_rows` bounds the training rows held at once (default: about
    64 MB of float64). Raises CropiError (nothing written) on any inconsistent input."""
    t0 = time.perf_counter()
    validate_section(cfg, "selection")
    m = store.read_manifest(influence_dir)
    ids, ds, fam = _pool_arrays(prompts)
    by_id = {p.prompt_id: p for p in prompts}
    lab = np.array([str(by_id[int(i)].extra_info.get("label", "clean")) for i in ids], dtype=object)
    prev = previous_selected_ids(previous_selection) if previous_selection is not None else None
    if m.mode == "projected":
        targets, val_info = load_projected_targets(m, cfg.max_val_grads, seed)
        target_norms = np.linalg.norm(targets, axis=1)
    else:
        targets, (target_norms, val_info) = None, store.read_val_targets(m)
    batch_rows = batch_rows or store.default_batch_rows(m)
    scores, eligible, rows = stream_scores(m, ids, targets, target_norms, batch_rows)
    if not eligible.any():
        raise CropiError(f"every one of the {len(ids)} training prompts has a zero gradient in {m.dir}; "
                         "nothing to select (refresh the buffer?)")
    res = select_from_scores(scores, eligible, ids, cfg.alpha, cfg.fusion, cfg.k_rrf)
    sel, n = res["selected"], res["n_select"]

    summary = {
        "influence_dir": str(m.dir), "mode": m.mode, "sets": m.sets, "seed": seed,
        "alpha": cfg.alpha, "fusion": cfg.fusion, "k_rrf": cfg.k_rrf, "max_val_grads": cfg.max_val_grads,
        "pool_size": int(len(ids)), "zero_grad": int((~eligible).sum()), "eligible": int(eligible.sum()),
        "n_select": n, "selected": int(sel.sum()),
        "validation": val_info,
        "composition": {"family": composition(fam, eligible, sel), "data_source": composition(ds, eligible, sel),
                        **({"label": composition(lab, eligible, sel)} if len(set(lab.tolist())) > 1 else {})},
        "scores": {name: score_stats(scores[:, j], eligible, sel, res["ranks"][:, j], n)
                   for j, name in enumerate(m.sets)},
        "previous": None if prev is None else {
            "path": str(previous_selection), "selected": int(len(prev)), "intersection": int(np.isin(ids[sel], prev).sum()),
            "jaccard": jaccard(ids[sel], prev)},
        "io": {"train_shards": m.num_train_shards, "rows_read": rows,
               "batch_rows": batch_rows},
    }
    table = _selection_table(m.sets, ids, ds, fam, eligible, scores, res)
    summary["seconds"] = round(time.perf_counter() - t0, 3)  # scoring and selection, before writing
    out = Path(out_dir)
    write_selection(table, out / SELECTION_FILE, summary)
    return summary
