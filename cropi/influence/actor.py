"""`GradientActor`s (one per GPU, one per CPU slot here) and the phase-level influence stage.

For phase M the actors load theta_M, fix the sampled coordinates (from the run seed: the same
for every prompt, split and phase) and turn each buffer train shard into one influence shard,
1:1 and atomically, so a rerun skips what is done:

    RUN_DIR/phase-M/influence/train/shard-i.parquet   prompt_id, zero_grad, kl, num_tokens, and
        exact:     norm, dot__<set> per validation set
        projected: grad fixed_size_list<float32>[k]
    RUN_DIR/phase-M/influence/val/<set>/shard-00000.parquet   (projected) every validation prompt
    RUN_DIR/phase-M/influence/val_targets.json                (exact) ||v_j||, prompts used
    RUN_DIR/phase-M/influence/manifest.json   written last: mode, sets, k, shard count, drift

In exact mode v_j, the mean gradient of up to `selection.max_val_grads` validation prompts with
a non-zero gradient (sampled with the seed), is formed first by one batched backward pass per
chunk and handed to every actor. The drift monitor is the token-weighted mean over the
training buffer of the per-token KL(pi_theta || beta) estimate, written to the manifest.
"""

from __future__ import annotations

import json
import random
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from cropi.config import Config
from cropi.data.dataset import atomic_write_table
from cropi.errors import CropiError
from cropi.ray_utils import get

BUFFER_COLUMNS = ["prompt_id", "prompt_ids", "response_ids", "behavior_logp", "advantage", "group_std"]


def _batches(rows: list[dict], prompts_per_batch: int):
    """Consecutive chunks of whole prompts (rows of a prompt are contiguous in a buffer shard)."""
    ids = list(dict.fromkeys(r["prompt_id"] for r in rows))
    by = {}
    for r in rows:
        by.setdefault(r["prompt_id"], []).append(r)
    for i in range(0, len(ids), prompts_per_batch):
        yield [r for pid in ids[i:i + prompts_per_batch] for r in by[pid]]


@ray.remote
class GradientActor:
    def __init__(self, cfg: Config, checkpoint: str):
        import torch

        from cropi.influence.coords import sample_coordinates
        from cropi.model.loading import load_model, load_tokenizer

        self.cfg = cfg
        self.device = "cpu" if cfg.resources.device == "cpu" else "cuda"
        torch.set_num_threads(max(1, int(cfg.influence.num_cpus_per_actor)))
        self.model = load_model(checkpoint, cfg.model.dtype, self.device).eval()
        self.pad_id = load_tokenizer(checkpoint).pad_token_id
        self.coords = sample_coordinates(self.model, cfg.influence.params, cfg.influence.sample_ratio,
                                         cfg.run.seed + 17)

    def val_gradient(self, rows: list[dict]) -> dict:
        from cropi.influence.batch import make_batch
        from cropi.influence.batched import validation_mean_gradient

        batches = [make_batch(b, self.pad_id)[0] for b in _batches(rows, self.cfg.influence.batch_prompts)]
        v = validation_mean_gradient(self.model, batches, self.coords, self.cfg.influence.grad_dtype)
        return {k: t.cpu() for k, t in v.items()}  # travels through the object store to every actor

    def score_rows(self, rows: list[dict], val_grads: dict | None) -> dict:
        """Per-prompt outputs for buffer rows, batch by batch: numpy arrays keyed by column."""
        import torch

        from cropi.influence.batch import make_batch
        from cropi.influence.batched import prompt_scores

        inf = self.cfg.influence
        cols: dict[str, list] = {}
        for chunk in _batches(rows, inf.batch_prompts):
            batch, ids = make_batch(chunk, self.pad_id)
            out = prompt_scores(self.model, batch, self.coords, inf.mode, val_grads=val_grads,
                                proj_dim=inf.proj_dim, proj_kind=inf.proj_kind, seed=self.cfg.run.seed + 29,
                                grad_dtype=inf.grad_dtype)
            part = {"prompt_id": np.asarray(ids, np.int64), "zero_grad": out["zero_grad"].numpy(),
                    "kl": out["kl"].double().numpy(), "num_tokens": out["num_tokens"].numpy()}
            if inf.mode == "exact":
                part["norm"] = out["norms"].double().numpy()
                for s, d in out["dots"].items():
                    part[f"dot__{s}"] = d.double().numpy()
            else:
                part["grad"] = out["projected"].to(torch.float32).numpy()
            for k, v in part.items():
                cols.setdefault(k, []).append(v)
        return {k: np.concatenate(v) for k, v in cols.items()}

    def score_shard(self, buffer_shard: str, out_path: str, val_grads: dict | None, refresh_shard: str | None = None) -> dict:
        rows = pq.read_table(buffer_shard, columns=BUFFER_COLUMNS).to_pylist()
        if refresh_shard is not None:  # re-rolled zero-gradient prompts replace their buffered trajectories
            fresh = pq.read_table(refresh_shard, columns=BUFFER_COLUMNS).to_pylist()
            ids = {r["prompt_id"] for r in fresh}
            rows = [r for r in rows if r["prompt_id"] not in ids] + fresh
        t0 = time.time()
        cols = self.score_rows(rows, val_grads)
        atomic_write_table(to_table(cols), Path(out_path))
        return {"prompts": len(cols["prompt_id"]), "seconds": time.time() - t0}


def to_table(cols: dict) -> pa.Table:
    arrays = {}
    for k, v in cols.items():
        if k == "grad":
            flat = pa.array(v.reshape(-1).astype(np.float32))
            arrays[k] = pa.FixedSizeListArray.from_arrays(flat, v.shape[1])
        else:
            arrays[k] = pa.array(v)
    return pa.table(arrays)


def _val_rows(bdir: Path, name: str, max_prompts: int | None, seed: int) -> list[dict]:
    """A validation set's buffer rows; with max_prompts, a seeded sample of its non-zero prompts."""
    from cropi.rollout.buffer import read_split

    rows = read_split(bdir, f"val/{name}", BUFFER_COLUMNS).to_pylist()
    if max_prompts is None:
        return rows
    live = sorted({r["prompt_id"] for r in rows if r["group_std"] > 0})
    if not live:
        raise CropiError(f"validation set {name!r}: every prompt has equal rewards over its samples, so its "
                         "gradient is zero; a larger rollout.k_val or another base model is needed")
    rng = random.Random(seed * 1_000_003 + zlib.crc32(name.encode()))
    keep = set(rng.sample(live, min(max_prompts, len(live))))
    return [r for r in rows if r["prompt_id"] in keep]


def influence_hash(cfg: Config, checkpoint: str) -> str:
    from cropi.rollout.buffer import buffer_hash, stable_hash

    return stable_hash({"influence": cfg.section_hash("influence"), "checkpoint": checkpoint,
                        "max_val_grads": cfg.selection.max_val_grads, "buffer": buffer_hash(cfg)})


def run_influence(cfg: Config, phase: int, log=print) -> dict:
    """Write RUN_DIR/phase-M/influence for theta_M; resumes shard by shard; returns the manifest."""
    from tqdm import tqdm

    from cropi.layout import phase_dir, phase_start_checkpoint
    from cropi.placement import workers_placement
    from cropi.rollout.buffer import buffer_dir, read_manifest, write_json_atomic

    ckpt = phase_start_checkpoint(cfg, phase)
    bdir = buffer_dir(cfg)
    bman = read_manifest(bdir)
    if not bman or not bman.get("complete"):
        raise CropiError(f"buffer {bdir} is missing or incomplete: run `cropi rollout` first")
    sets = [s.split("/", 1)[1] for s in bman["splits"] if s.startswith("val/")]
    idir = phase_dir(cfg, phase) / "influence"
    want = influence_hash(cfg, ckpt)
    plan = idir / "plan.json"
    if plan.is_file() and json.loads(plan.read_text()).get("hash") != want:
        raise CropiError(f"{idir} was computed with another config or checkpoint; delete it to recompute")
    if (idir / "manifest.json").is_file():
        return json.loads((idir / "manifest.json").read_text())
    idir.mkdir(parents=True, exist_ok=True)
    plan.write_text(json.dumps({"hash": want, "checkpoint": ckpt}))
    inf, t0 = cfg.influence, time.time()
    refreshed = 0
    if inf.refresh_zero_grad:
        from cropi.data.suite import load_data
        from cropi.rollout.refresh import refresh_zero_grad

        refreshed = refresh_zero_grad(cfg, phase, load_data(cfg)[0], bdir, ckpt)
        if refreshed:
            log(f"phase {phase}: re-rolled {refreshed} zero-gradient prompts with theta_{phase}")
    rdir = idir.parent / "refresh"
    place = workers_placement(inf.num_actors, inf.num_cpus_per_actor, inf.num_gpus_per_actor, f"phase {phase} influence")
    actors = [GradientActor.options(name=f"cropi-gradient-{phase}-{i}", num_cpus=inf.num_cpus_per_actor,
                                    num_gpus=inf.num_gpus_per_actor, scheduling_strategy=place.strategy(i),
                                    ).remote(cfg, ckpt) for i in range(inf.num_actors)]
    try:
        val_ref, val_info = None, {}
        if inf.mode == "exact":
            rows = {s: _val_rows(bdir, s, cfg.selection.max_val_grads, cfg.run.seed) for s in sets}
            grads = get([actors[i % len(actors)].val_gradient.remote(rows[s]) for i, s in enumerate(sets)])
            val_grads = dict(zip(sets, grads))
            for s, g in val_grads.items():
                norm = float(sum(float((v.double() ** 2).sum()) for v in g.values()) ** 0.5)
                if norm == 0.0:
                    raise CropiError(f"validation set {s!r}: its mean gradient is zero")
                val_info[s] = {"norm": norm, "num_prompts": len({r["prompt_id"] for r in rows[s]})}
            write_json_atomic(idir / "val_targets.json", val_info)
            val_ref = ray.put(val_grads)
        else:
            for i, s in enumerate(sets):
                out = idir / "val" / s / "shard-00000.parquet"
                if not out.is_file():
                    cols = get(actors[i % len(actors)].score_rows.remote(_val_rows(bdir, s, None, 0), None))
                    atomic_write_table(to_table(cols), out)
        shards = sorted((bdir / "train").glob("shard-*.parquet"))
        todo = [p for p in shards if not (idir / "train" / p.name).is_file()]
        bar = tqdm(total=len(shards), initial=len(shards) - len(todo), desc=f"phase {phase} gradient shards")
        pending, idle = {}, list(actors)
        while todo or pending:
            while todo and idle:
                a, p = idle.pop(), todo.pop(0)
                fresh = rdir / p.name if inf.refresh_zero_grad and (rdir / p.name).is_file() else None
                pending[a.score_shard.remote(str(p), str(idir / "train" / p.name), val_ref,
                                             str(fresh) if fresh else None)] = a
            done, _ = ray.wait(list(pending), num_returns=1)
            a = pending.pop(done[0])
            get(done[0])
            bar.update(1)
            idle.append(a)
        bar.close()
    except ray.exceptions.RayActorError as e:
        raise CropiError(f"phase {phase}: a gradient actor died ({type(e).__name__}); rerun the same command "
                         "to resume: complete gradient shards are kept") from None
    finally:
        for a in actors:
            ray.kill(a)
        place.remove()
    kl_num = kl_den = 0.0
    zero = 0
    for p in shards:
        t = pq.read_table(idir / "train" / p.name, columns=["kl", "num_tokens", "zero_grad"])
        n = t.column("num_tokens").to_numpy().astype(np.float64)
        kl_num += float((t.column("kl").to_numpy() * n).sum())
        kl_den += float(n.sum())
        zero += int(t.column("zero_grad").to_numpy().sum())
    drift = kl_num / max(kl_den, 1.0)
    manifest = {"mode": inf.mode, "sets": sets, "proj_dim": inf.proj_dim if inf.mode == "projected" else None,
                "num_train_shards": len(shards), "checkpoint": ckpt, "sample_ratio": inf.sample_ratio,
                "params": inf.params, "grad_dtype": inf.grad_dtype, "zero_grad_prompts": zero,
                "refreshed_prompts": sum(pq.read_metadata(p).num_rows for p in rdir.glob("shard-*.parquet"))
                // max(cfg.rollout.k_train, 1) if inf.refresh_zero_grad else 0,
                "kl_drift": drift, "kl_refresh_threshold": inf.kl_refresh_threshold,
                "buffer_stale": drift > inf.kl_refresh_threshold, "seconds": round(time.time() - t0, 2)}
    if manifest["buffer_stale"]:
        log(f"phase {phase}: KL(pi_theta || beta) on the buffer is {drift:.3f} > {inf.kl_refresh_threshold}: "
            "the off-policy gradients are drifting from the policy; consider refreshing the buffer")
    write_json_atomic(idir / "manifest.json", manifest)
    return manifest
