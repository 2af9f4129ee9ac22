"""`GradientActor`s (one per GPU, one per CPU slot here) and the phase-level influence stage.

For phase M the actors load theta_M, fix the sampled coordinates (cropi.seeds.coordinates: the
same for every prompt, split and phase) and turn each buffer train shard into one influence
shard, 1:1 and atomically, so a rerun skips what is done (layout: cropi.store.influence).
With `influence.refresh_zero_grad` the driver has re-rolled the zero-gradient prompts first
(cropi.rollout.refresh); their fresh trajectories replace the buffered ones here.

In exact mode v_j, the mean gradient of the validation prompts chosen by
`selection.scoring.val_target_prompts` (the same prompts the projected mode averages), is
formed first by one batched backward pass per chunk and handed to every actor. The drift
monitor (objective.buffer_drift) goes into the manifest, which is written last.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import ray

from cropi import seeds
from cropi.config import INFLUENCE
from cropi.errors import CropiError
from cropi.store import influence as store, records
from cropi.store.buffer import GRADIENT_COLUMNS, buffer_hash, complete_manifest, read_rows, read_split, val_sets
from cropi.store.files import remove_stale_tmp, shards_to_write
from cropi.hashing import stable_hash
from cropi.store.paths import RunPaths, phase_start_checkpoint
from cropi.selection.scoring import val_target_prompts
from cropi.placement import placement_wait
from cropi.pool import WorkerPool
from cropi.rollout.refresh import live_train_shards, read_refresh_manifest, rebuffered_phases, refreshed_shards


@ray.remote
class GradientActor:
    """Scores buffer rows against the weights of one checkpoint. Every call names the checkpoint
    it is for: an actor holding another one (the previous phase's, kept alive across phases;
    or its constructor's, after Ray restarted it) loads it first, so a call never scores with
    stale weights. `release` frees the model between stages."""

    def __init__(self, cfg, checkpoint: str):
        import torch

        self.cfg, self.checkpoint, self.model, self.coords = cfg, None, None, None
        self.device = "cpu" if cfg.resources.device == "cpu" else "cuda"
        torch.set_num_threads(max(1, int(cfg.resources.influence.num_cpus)))
        self._hold(checkpoint)

    def _hold(self, checkpoint: str) -> None:
        from cropi.influence.coords import sample_coordinates
        from cropi.model.loading import load_model, load_tokenizer

        if self.checkpoint == checkpoint and self.model is not None:
            return
        self.release()
        self.model = load_model(checkpoint, self.cfg.model.dtype, self.device).eval()
        self.pad_id = load_tokenizer(checkpoint).pad_token_id
        if self.coords is None:  # the same for every checkpoint of a run (cropi.seeds.coordinates)
            self.coords = sample_coordinates(self.model, self.cfg.influence.params, self.cfg.influence.sample_ratio,
                                             seeds.coordinates(self.cfg.run.seed))
        self.checkpoint = checkpoint

    def release(self) -> None:
        """Free the model (its GPU memory too); the process, its imports and coordinates stay."""
        import gc

        import torch

        from cropi.influence.projection import clear_sjlt_cache

        self.model, self.checkpoint = None, None
        clear_sjlt_cache()  # up to SJLT_CACHE_MB on the device: drawn again next phase
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()

    def coverage(self, checkpoint: str) -> dict:
        from cropi.influence.params import coverage

        self._hold(checkpoint)
        return coverage(self.model, self.coords)

    def val_gradient(self, checkpoint: str, rows: list[dict]) -> dict:
        from cropi.influence.passes import val_gradient

        self._hold(checkpoint)
        return val_gradient(self.model, self.coords, self.pad_id, rows, self.cfg.influence)

    def score_rows(self, checkpoint: str, rows: list[dict], val_grads: dict | None) -> dict:
        """Per-prompt outputs for buffer rows (cropi.influence.passes)."""
        from cropi.influence.passes import score_rows

        self._hold(checkpoint)
        return score_rows(self.model, self.coords, self.pad_id, rows, self.cfg.influence,
                          seeds.projection(self.cfg.run.seed), val_grads)

    def score_shard(self, checkpoint: str, buffer_shard: str, out_path: str, val_grads: dict | None,
                    refresh_shard: str | None = None) -> dict:
        rows = read_rows(Path(buffer_shard))
        if refresh_shard is not None:  # re-rolled zero-gradient prompts replace their buffered trajectories
            fresh = read_rows(Path(refresh_shard))
            ids = {r["prompt_id"] for r in fresh}
            rows = [r for r in rows if r["prompt_id"] not in ids] + fresh
        t0 = time.time()
        cols = self.score_rows(checkpoint, rows, val_grads)
        store.write_shard(_table(cols), out_path)
        return {"prompts": len(cols["prompt_id"]), "seconds": time.time() - t0}


def _table(cols: dict):
    dots = {k[len("dot__"):]: v for k, v in cols.items() if k.startswith("dot__")}
    return store.shard_table(cols["prompt_id"], cols["zero_grad"], grad=cols.get("grad"), norm=cols.get("norm"),
                             dots=dots or None, kl=cols["kl"], num_tokens=cols["num_tokens"])


def val_target_rows(bdir: Path, name: str, max_val_grads: int, run_seed: int) -> tuple[list[dict], list[int]]:
    """Exact mode: the buffer rows of the validation prompts that form set `name`'s target."""

    rows = read_split(bdir, f"val/{name}", GRADIENT_COLUMNS).to_pylist()
    ids = np.array(sorted({r["prompt_id"] for r in rows}), np.int64)
    live = {r["prompt_id"] for r in rows if r["group_std"] > 0}
    chosen = val_target_prompts(ids, np.array([i in live for i in ids.tolist()], bool), max_val_grads,
                                seeds.val_targets(run_seed), name)
    if len(chosen) == 0:
        raise CropiError(f"validation set {name!r}: every prompt has equal rewards over its samples, so its "
                         "gradient is zero; a larger rollout.k_val or another base model is needed")
    keep = set(chosen.tolist())
    return [r for r in rows if r["prompt_id"] in keep], sorted(keep)


def influence_hash(cfg, checkpoint: str, rebuffered: list[int] = ()) -> str:
    """What a phase's influence output depends on (not actor counts or resources): with the
    drift policy, also which re-rolled buffer it read (cropi.rollout.refresh.live_train_shards)."""
    key = {"influence": cfg.artifact_hash(INFLUENCE), "checkpoint": checkpoint, "buffer": buffer_hash(cfg)}
    if rebuffered:
        key["rebuffered"] = list(rebuffered)
    return stable_hash(key)


def gradient_pool(cfg, checkpoint: str, phase: int | None = None):
    """The gradient actors: of one phase, or (phase None, resources.influence.keep_alive) of the
    whole run, passed to every phase's run_influence."""

    r = cfg.resources.influence
    return WorkerPool(GradientActor, lambda i: (cfg, checkpoint), count=r.num_actors, cpus=r.num_cpus, gpus=r.num_gpus,
                      what="influence" if phase is None else f"phase {phase} influence",
                      name="cropi-gradient" if phase is None else f"cropi-gradient-{phase}",
                      options={"max_restarts": r.max_restarts, "max_task_retries": r.max_restarts},
                      wait=placement_wait(cfg), fields="resources.influence.num_actors, num_cpus and num_gpus")


def run_influence(cfg, phase: int, log=print, pool=None) -> dict:
    """Write RUN_DIR/phase-M/influence for theta_M; resumes shard by shard; returns the manifest.
    With `pool` (gradient_pool of the run) its living actors load theta_M and free it at the end;
    without, the phase starts and stops its own."""
    import torch
    from tqdm import tqdm

    from cropi.influence.objective import buffer_drift

    ckpt = phase_start_checkpoint(cfg, phase)
    bdir, bman = complete_manifest(cfg)
    sets = val_sets(bman)
    idir = RunPaths.of(cfg).influence(phase)
    rebuffered = rebuffered_phases(cfg, phase)
    want = influence_hash(cfg, ckpt, rebuffered)
    plan = records.read_if(records.INFLUENCE_PLAN, store.plan_path(idir))
    if plan is not None and plan.get("hash") != want:
        raise CropiError(f"{idir} was computed with another influence config, checkpoint or buffer; "
                         "delete it to recompute")
    if store.manifest_path(idir).is_file():
        return records.read(records.INFLUENCE_MANIFEST, store.manifest_path(idir))
    inf, t0 = cfg.influence, time.time()
    fresh = refreshed_shards(cfg, phase) if inf.refresh_zero_grad else {}
    records.write(records.INFLUENCE_PLAN, {"hash": want, "checkpoint": ckpt}, store.plan_path(idir))
    shards = live_train_shards(cfg, phase)
    kept = pool is not None
    with contextlib.ExitStack() as scope:
        if not kept:
            pool = scope.enter_context(gradient_pool(cfg, ckpt, phase))
        covered = pool.each(lambda a: a.coverage.remote(ckpt))[0]
        startup = time.time() - t0  # the actors are up, their model loaded: the rest is work
        val_ref = None
        if inf.mode == "exact":
            chosen = {s: val_target_rows(bdir, s, cfg.selection.max_val_grads, cfg.run.seed) for s in sets}
            grads = pool.map(lambda a, s: a.val_gradient.remote(ckpt, chosen[s][0]), sets, describe=lambda s: f"validation set {s}",
                             timeout_s=cfg.run.hang_timeout_s)
            val_grads = dict(zip(sets, grads))
            targets = {}
            for s, g in val_grads.items():
                norm = float(sum(float((v.double() ** 2).sum()) for v in g.values()) ** 0.5)
                if norm == 0.0:
                    raise CropiError(f"validation set {s!r}: its mean gradient is zero")
                targets[s] = {"norm": norm, "num_prompts": len(chosen[s][1]), "prompt_ids": chosen[s][1]}
            store.write_val_targets(idir, targets)
            val_ref = ray.put(val_grads)
        else:
            todo_sets = shards_to_write(sets, lambda s: store.val_shard_path(idir, s), None, log, f"phase {phase} influence")
            cols = pool.map(lambda a, s: a.score_rows.remote(ckpt, read_split(bdir, f"val/{s}", GRADIENT_COLUMNS).to_pylist(), None),
                            todo_sets, describe=lambda s: f"validation set {s}", timeout_s=cfg.run.hang_timeout_s)
            for s, c in zip(todo_sets, cols):
                store.write_shard(_table(c), store.val_shard_path(idir, s))
        todo = shards_to_write(shards, lambda p: store.train_shard_path(idir, p.name),
                           lambda p: store.expected_rows(p, cfg.rollout.k_train), log, f"phase {phase} influence")
        with tqdm(total=len(shards), initial=len(shards) - len(todo), desc=f"phase {phase} gradient shards") as bar:
            pool.map(lambda a, p: a.score_shard.remote(ckpt, str(p), str(store.train_shard_path(idir, p.name)), val_ref,
                                                       str(fresh[p.name]) if p.name in fresh else None),
                     todo, on_done=lambda *_: bar.update(1), describe=lambda p: f"buffer shard {p.name}",
                     timeout_s=cfg.run.hang_timeout_s)
        if kept:  # the actors live on without their model while the other stages run
            pool.each(lambda a: a.release.remote())
    kl, num_tokens, zero = store.read_drift_columns([store.train_shard_path(idir, p.name) for p in shards])
    drift = buffer_drift(torch.tensor(kl), torch.tensor(num_tokens))  # copies: Arrow's buffers are read-only
    refreshed = read_refresh_manifest(cfg, phase) if inf.refresh_zero_grad else None
    if drift > inf.kl_stale_threshold:
        log(f"phase {phase}: KL(pi_theta || beta) on the buffer is {drift:.3f} > {inf.kl_stale_threshold}: "
            "the off-policy gradients are drifting from the policy; consider refreshing the buffer")
    remove_stale_tmp(idir)  # left by an actor killed mid-write (Ray restarted it and redid the shard)
    store.write_manifest(idir, inf.mode, sets, len(shards), inf.proj_dim if inf.mode == "projected" else None,
                         checkpoint=ckpt, sample_ratio=inf.sample_ratio, params=inf.params, coverage=covered,
                         proj_kind=inf.proj_kind if inf.mode == "projected" else None,
                         grad_dtype=inf.grad_dtype, zero_grad_prompts=int(zero.sum()),
                         refreshed_prompts=refreshed["prompts"] if refreshed else 0, kl_drift=drift,
                         kl_stale_threshold=inf.kl_stale_threshold, buffer_stale=drift > inf.kl_stale_threshold,
                         rebuffered_at=rebuffered, startup_seconds=round(startup, 2),
                         seconds=round(time.time() - t0, 2))
    return records.read(records.INFLUENCE_MANIFEST, store.manifest_path(idir))
