"""`cropi rollout`: build the offline buffer with N vLLM workers, resuming what is done."""

from __future__ import annotations

import shutil
from pathlib import Path

from cropi.config import Config
from cropi.data.suite import load_data
from cropi.errors import CropiError
from cropi.model.loading import check_model_dir, load_tokenizer
from cropi.data.rewards import load_reward_fn
from cropi.rollout.buffer import buffer_dir, claim_buffer, plan_shards, read_manifest, summarise, write_json_atomic


def build_buffer(cfg: Config, progress: bool = True) -> dict:
    """Build (or finish) RUN_DIR/buffer; returns the completed manifest."""

    check_model_dir(cfg.model.path)
    load_tokenizer(cfg.model.path)  # fail here, not inside an actor, on a broken checkpoint
    load_reward_fn(cfg.data.reward_fn)
    train, val = load_data(cfg)
    specs = plan_shards(cfg, train, val)
    fresh = not (buffer_dir(cfg) / "manifest.json").is_file()
    bdir = claim_buffer(cfg, specs)
    try:
        _build(cfg, specs, bdir, progress)
    except CropiError:
        if fresh and not list(bdir.rglob("shard-*.parquet")):
            shutil.rmtree(bdir, ignore_errors=True)  # bad input: leave nothing behind
            if bdir.parent.is_dir() and not any(bdir.parent.iterdir()):
                bdir.parent.rmdir()
        raise
    manifest = read_manifest(bdir)
    manifest.update(summarise(bdir), complete=True)
    write_json_atomic(bdir / "manifest.json", manifest)
    return manifest


def _build(cfg: Config, specs, bdir: Path, progress: bool) -> None:
    import ray
    from tqdm import tqdm

    from cropi.placement import workers_placement
    from cropi.ray_utils import get, ray_session
    from cropi.rollout.worker import start_workers

    todo = [s for s in specs if not (bdir / s.relpath).is_file()]
    if todo:
        with ray_session(cfg):
            ro = cfg.rollout
            place = workers_placement(ro.num_workers, ro.num_cpus_per_worker, ro.num_gpus_per_worker, "buffer")
            workers = start_workers(cfg, str(Path(cfg.model.path).resolve()), place, list(range(ro.num_workers)))
            bar = tqdm(total=sum(len(s.rows) for s in specs), initial=sum(len(s.rows) for s in specs) - sum(len(s.rows) for s in todo),
                       desc="buffer prompts", unit="prompt", disable=not progress)
            pending, queue = {}, list(todo)
            idle = list(workers)
            while queue or pending:
                while queue and idle:
                    w, spec = idle.pop(), queue.pop(0)
                    pending[w.build_shard.remote(spec, str(bdir / spec.relpath))] = (w, spec)
                done, _ = ray.wait(list(pending), num_returns=1)
                w, spec = pending.pop(done[0])
                try:
                    get(done[0])
                except ray.exceptions.RayActorError as e:
                    raise CropiError(f"rollout worker died while building {spec.relpath} ({type(e).__name__}); "
                                     "rerun the same command to resume: complete shards are kept") from None
                bar.update(len(spec.rows))
                idle.append(w)
            bar.close()
            for w in workers:
                ray.kill(w)
            place.remove()
