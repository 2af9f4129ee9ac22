"""Refreshing zero-gradient prompts (beyond the paper; `influence.refresh_zero_grad`).

A training prompt whose K buffered rewards are all equal has advantage 0, hence gradient 0, and
can never be selected. Before phase M is scored, such prompts are re-rolled with theta_M
(K fresh samples, behavior log-probs recomputed under theta_M) into

    RUN_DIR/phase-M/refresh/shard-i.parquet     (the buffer's schema, split "refresh/phase-M")

one file per buffer train shard i with such prompts, written atomically, so a rerun skips what
is done; `refresh/manifest.json`, written last, lists them and marks the refresh complete. The
gradient actors then score those prompts on the refreshed trajectories; for them rho is
pi_theta / theta_M, i.e. 1 at theta_M.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow.parquet as pq

from cropi.data.dataset import PromptRow
from cropi.store.buffer import ShardSpec, complete_manifest, train_shards
from cropi.store import records
from cropi.store.files import remove_stale_tmp, shards_to_write
from cropi.store.paths import RunPaths, phase_start_checkpoint
from cropi.errors import CropiError


def refresh_specs(cfg, phase: int, pool: list[PromptRow], bdir: Path) -> list[tuple[ShardSpec, Path]]:
    """For each buffer train shard with zero-gradient prompts: (spec of those prompts, output path)."""
    by_id = {r.prompt_id: r for r in pool}
    out_dir = RunPaths.of(cfg).refresh(phase)
    specs = []
    for i, shard in enumerate(live_train_shards(cfg, phase)):
        t = pq.read_table(shard, columns=["prompt_id", "group_std"]).to_pylist()
        zero = sorted({r["prompt_id"] for r in t if r["group_std"] == 0})
        if zero:
            specs.append((ShardSpec(f"refresh/phase-{phase}", i, [by_id[p] for p in zero], cfg.rollout.k_train),
                          out_dir / shard.name))
    return specs


def refresh_zero_grad(cfg, phase: int, pool: list[PromptRow], log=print) -> dict:
    """Re-roll phase M's zero-gradient prompts with theta_M, then write refresh/manifest.json
    (last, atomically); returns it: {"prompts": re-rolled in all, "new": re-rolled now, "shards": [...]}."""
    from cropi.rollout.writer import write_shards

    bdir, _ = complete_manifest(cfg)
    done = read_refresh_manifest(cfg, phase)
    if done is not None:
        return {**done, "new": 0}
    specs = refresh_specs(cfg, phase, pool, bdir)
    todo = shards_to_write(specs, lambda j: j[1], lambda j: j[0].num_trajectories, log, f"phase {phase} refresh")
    if todo:
        rcfg = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, hf_recompute=True))  # beta := theta_M
        write_shards(rcfg, phase_start_checkpoint(cfg, phase), todo, f"phase {phase} refresh")
        log(f"phase {phase}: re-rolled {sum(len(s.rows) for s, _ in todo)} zero-gradient prompts with theta_{phase}")
    manifest = {"prompts": sum(len(s.rows) for s, _ in specs), "shards": sorted(p.name for _, p in specs)}
    remove_stale_tmp(RunPaths.of(cfg).refresh(phase))  # left by a writer killed mid-write
    records.write(records.REFRESH_MANIFEST, manifest, RunPaths.of(cfg).refresh_manifest(phase))
    return {**manifest, "new": sum(len(s.rows) for s, _ in todo)}


def read_refresh_manifest(cfg, phase: int) -> dict | None:
    return records.read_if(records.REFRESH_MANIFEST, RunPaths.of(cfg).refresh_manifest(phase))


def refreshed_shards(cfg, phase: int) -> dict[str, Path]:
    """Buffer train shard name -> its refresh shard; CropiError if the refresh has not finished."""

    manifest = read_refresh_manifest(cfg, phase)
    if manifest is None:
        raise CropiError(f"phase {phase}: influence.refresh_zero_grad is on but {RunPaths.of(cfg).refresh(phase)} "
                         "is not complete; the driver re-rolls it before scoring (cropi run / cropi influence)")
    rdir = RunPaths.of(cfg).refresh(phase)
    return {name: rdir / name for name in manifest["shards"]}


# --- the drift policy (influence.kl_refresh_threshold): the whole training buffer re-rolled ---
#
#     RUN_DIR/phase-M/rebuffer/shard-i.parquet   every prompt of buffer train shard i, K samples of
#                                                theta_M (split "rebuffer/phase-M"), log-probs under theta_M
#     RUN_DIR/phase-M/rebuffer/manifest.json     written last: complete; the KL that triggered it
#
# From phase M on, each train shard is read from the latest complete rebuffer at or before the
# phase (`live_train_shards`); the buffer itself is never changed.

def rebuffer_dir(cfg, phase: int) -> Path:
    return RunPaths.of(cfg).rebuffer(phase)


def read_rebuffer_manifest(cfg, phase: int) -> dict | None:
    return records.read_if(records.REBUFFER_MANIFEST, RunPaths.of(cfg).rebuffer_manifest(phase))


def rebuffered_phases(cfg, phase: int) -> list[int]:
    """Phases <= `phase` whose rebuffer is complete, ascending."""
    return [k for k in range(phase + 1) if read_rebuffer_manifest(cfg, k) is not None]


def live_train_shards(cfg, phase: int) -> list[Path]:
    """The training trajectories phase M scores: each buffer train shard, or its latest re-roll."""
    bdir, _ = complete_manifest(cfg)
    shards = train_shards(bdir)
    done = rebuffered_phases(cfg, phase)
    if not done:
        return shards
    latest = rebuffer_dir(cfg, done[-1])
    return [latest / s.name for s in shards]


def rebuffer(cfg, phase: int, pool: list[PromptRow], kl: float, log=print) -> dict:
    """Re-roll every training prompt with theta_M (resumable shard by shard); returns the manifest."""
    from cropi.rollout.writer import write_shards

    done = read_rebuffer_manifest(cfg, phase)
    if done is not None:
        return done
    bdir, _ = complete_manifest(cfg)
    by_id = {r.prompt_id: r for r in pool}
    out = rebuffer_dir(cfg, phase)
    jobs = []
    for i, shard in enumerate(train_shards(bdir)):
        ids = sorted({r["prompt_id"] for r in pq.read_table(shard, columns=["prompt_id"]).to_pylist()})
        jobs.append((ShardSpec(f"rebuffer/phase-{phase}", i, [by_id[p] for p in ids], cfg.rollout.k_train), out / shard.name))
    todo = shards_to_write(jobs, lambda j: j[1], lambda j: j[0].num_trajectories, log, f"phase {phase} rebuffer")
    if todo:
        rcfg = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, hf_recompute=True))  # beta := theta_M
        write_shards(rcfg, phase_start_checkpoint(cfg, phase), todo, f"phase {phase} rebuffer")
        log(f"phase {phase}: buffer drift {kl:.4f} > {cfg.influence.kl_refresh_threshold}: re-rolled "
            f"{sum(len(s.rows) for s, _ in todo)} prompts with theta_{phase}")
    manifest = {"phase": phase, "kl_before": kl, "threshold": cfg.influence.kl_refresh_threshold,
                "prompts": sum(len(s.rows) for s, _ in jobs), "shards": sorted(p.name for _, p in jobs)}
    remove_stale_tmp(out)
    records.write(records.REBUFFER_MANIFEST, manifest, RunPaths.of(cfg).rebuffer_manifest(phase))
    return manifest
