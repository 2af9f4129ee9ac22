"""One CROPI training phase: GRPO on the selected prompts for E steps, with fresh vLLM rollouts.

Per step: draw B prompts from the selection (seeded by run seed, phase and step, so a resumed
phase draws the same prompts); G rollouts each from the vLLM workers running the trainer's
current weights; rewards and group advantages; one optimizer step on the W DeepSpeed ranks;
weight sync trainer -> vLLM every `sync_every` steps; validation pass@1 every `eval_every`.
A DeepSpeed checkpoint every `save_every` steps lets a rerun resume mid-phase; the phase ends
with a Hugging Face checkpoint at PHASE_DIR/checkpoint that the next phase starts from.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import ray
import torch

from cropi.algo.advantages import group_advantages
from cropi.algo.grpo import normaliser
from cropi.config import Config
from cropi.data.dataset import PromptRow
from cropi.errors import CropiError
from cropi.ray_utils import get
from cropi.rollout.buffer import prompt_seed


def _split(items: list, n: int) -> list[list]:
    return [items[i::n] for i in range(n)]


def rollout(workers, rows: list[PromptRow], n: int, temperature: float, seeds: list[int], where: str) -> dict:
    """Spread prompts over the workers and join their results in prompt order."""
    idx = _split(list(range(len(rows))), len(workers))
    parts = get([w.generate.remote([rows[i] for i in ix], n, temperature, [seeds[i] for i in ix], where)
                     for w, ix in zip(workers, idx) if ix])
    out = {k: [None] * len(rows) for k in ("prompt_ids", "rewards", "response_ids", "logprobs")}
    for ix, part in zip([ix for ix in idx if ix], parts):
        for k in out:
            for j, i in enumerate(ix):
                out[k][i] = part[k][j]
    return out


def evaluate(workers, val: dict[str, list[PromptRow]], cfg: Config, step: int) -> dict[str, float]:
    """pass@1 per validation set: mean reward of eval_samples samples per prompt."""
    res = {}
    for name, rows in val.items():
        seeds = [prompt_seed(cfg.run.seed + 7 + step, f"eval/{name}", r.prompt_id) for r in rows]
        out = rollout(workers, rows, cfg.trainer.eval_samples, cfg.rollout.temperature, seeds, f"val/{name}")
        res[name] = float(torch.tensor(out["rewards"]).mean())
    return res


def _latest_tag(state_dir: Path) -> str | None:
    p = state_dir / "latest"
    return p.read_text().strip() if p.is_file() else None


def run_phase(cfg: Config, phase: int, steps: int, pool: list[PromptRow], selected: list[int],
              val: dict[str, list[PromptRow]], start_ckpt: str, phase_dir: Path, log=print, on_step=None) -> dict:
    try:
        return _run_phase(cfg, phase, steps, pool, selected, val, start_ckpt, phase_dir, log, on_step or (lambda m: None))
    except ray.exceptions.RayActorError as e:
        raise CropiError(f"phase {phase}: a trainer rank or rollout worker died ({type(e).__name__}); rerun the "
                         f"same command to resume from the last DeepSpeed checkpoint in {phase_dir / 'trainer_state'}") from None


def _run_phase(cfg: Config, phase: int, steps: int, pool: list[PromptRow], selected: list[int],
               val: dict[str, list[PromptRow]], start_ckpt: str, phase_dir: Path, log, on_step) -> dict:
    from cropi.model.loading import load_tokenizer
    from cropi.placement import training_placement
    from cropi.rollout.worker import start_workers
    from cropi.trainer.group import TrainerGroup

    if not selected:
        raise CropiError(f"phase {phase}: the selection is empty; nothing to train on")
    by_id = {r.prompt_id: r for r in pool}
    missing = [i for i in selected if i not in by_id]
    if missing:
        raise CropiError(f"phase {phase}: selected prompt ids {missing[:5]} are not in the training pool")
    t, tok = cfg.trainer, load_tokenizer(start_ckpt)
    phase_dir.mkdir(parents=True, exist_ok=True)
    state_dir, metrics_path = phase_dir / "trainer_state", phase_dir / "train_metrics.jsonl"
    t_start = time.time()
    place, rank_bundles, worker_bundles = training_placement(cfg)
    workers = start_workers(cfg, start_ckpt, place, worker_bundles, tag=f"phase{phase}")
    group = TrainerGroup(cfg, start_ckpt, str(Path(cfg.model.path).resolve()), tag=str(phase),
                         placement=place, bundles=rank_bundles)
    startup = time.time() - t_start
    step0, tag = 0, _latest_tag(state_dir)
    if tag is not None:
        step0 = group.load_state(str(state_dir), tag)
        blob = ray.put(group.weights())
        get([w.load_weights.remote(blob) for w in workers])
        log(f"phase {phase}: resumed from DeepSpeed checkpoint {tag} (step {step0})")
    # keep the metrics of the steps that the checkpoint covers; the rest are redone
    lines = [json.loads(x) for x in metrics_path.read_text().splitlines()] if metrics_path.is_file() else []
    lines = [m for m in lines if m["step"] <= step0]
    metrics_path.write_text("".join(json.dumps(m) + "\n" for m in lines))
    if step0 == 0:
        ev = evaluate(workers, val, cfg, 0)
        m0 = {"phase": phase, "step": 0, **{f"val_pass@1/{k}": v for k, v in ev.items()}}
        _append(metrics_path, m0)
        on_step(m0)
        log(f"phase {phase} step 0: validation pass@1 " + " ".join(f"{k}={v:.3f}" for k, v in ev.items()))
    for step in range(step0 + 1, steps + 1):
        timing = {}
        t0 = time.time()
        rng = random.Random(prompt_seed(cfg.run.seed, f"train/phase{phase}", step))
        ids = rng.sample(selected, t.batch_prompts) if len(selected) >= t.batch_prompts else \
            [rng.choice(selected) for _ in range(t.batch_prompts)]
        rows = [by_id[i] for i in ids]
        seeds = [prompt_seed(cfg.run.seed + step, f"train/phase{phase}", i) for i in ids]
        out = rollout(workers, rows, t.group_size, cfg.rollout.temperature, seeds, "train")
        timing["rollout_seconds"] = time.time() - t0
        rewards = torch.tensor(out["rewards"], dtype=torch.float64)  # [B, G]
        adv, _, _ = group_advantages(rewards, t.adv_norm)  # [B, G]
        prompts = [p for p in out["prompt_ids"] for _ in range(t.group_size)]
        responses = [r for g in out["response_ids"] for r in g]
        advs = adv.flatten().tolist()
        lengths = torch.tensor([len(r) for r in responses])
        mask = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]  # [B*G, T]
        const = t.loss_norm_constant or t.batch_prompts * t.group_size * cfg.rollout.max_new_tokens
        gnorm = normaliser(mask, t.loss_agg, const)
        order = list(range(len(responses)))
        shards = [{"prompt_ids": [prompts[i] for i in ix], "response_ids": [responses[i] for i in ix],
                   "advantages": [advs[i] for i in ix], "pad_id": tok.pad_token_id}
                  for ix in _split(order, t.world_size)]
        t0 = time.time()
        ranks = group.train_step(shards, gnorm)
        timing["train_step_seconds"] = time.time() - t0
        timing["logprob_seconds"] = max(r["logprob_seconds"] for r in ranks)
        timing["train_seconds"] = max(r["train_seconds"] for r in ranks)
        ntok = sum(r["tokens"] for r in ranks)
        t0 = time.time()
        if step % t.sync_every == 0 or step == steps:
            blob = ray.put(group.weights())
            get([w.load_weights.remote(blob) for w in workers])
        timing["sync_seconds"] = time.time() - t0
        m = {"phase": phase, "step": step, "reward_mean": float(rewards.mean()),
             "loss": sum(r["loss_sum"] for r in ranks), "kl": sum(r["kl_sum"] for r in ranks) / ntok,
             "clip_frac": sum(r["clip_sum"] for r in ranks) / ntok,
             "entropy": sum(r["entropy_sum"] for r in ranks) / ntok, "grad_norm": ranks[0]["grad_norm"],
             "response_tokens": ntok, "zero_adv_prompts": int((rewards.std(1) == 0).sum()), **timing}
        m["tokens_per_s"] = ntok / max(sum(timing.values()), 1e-9)
        if step % t.eval_every == 0 or step == steps:
            t0 = time.time()
            ev = evaluate(workers, val, cfg, step)
            m.update({f"val_pass@1/{k}": v for k, v in ev.items()}, eval_seconds=time.time() - t0)
        if step % t.save_every == 0 or step == steps:
            group.save_state(str(state_dir), step)
        _append(metrics_path, m)
        on_step(m)
        log(f"phase {phase} step {step}/{steps}: reward {m['reward_mean']:.3f} kl {m['kl']:.4f} "
            f"grad_norm {m['grad_norm']:.3f}" + "".join(f" {k}={v:.3f}" for k, v in m.items() if k.startswith("val_")))
    ckpt = phase_dir / "checkpoint"
    group.save_hf(str(ckpt), start_ckpt)
    group.shutdown()
    for w in workers:
        ray.kill(w)
    place.remove()
    all_m = [json.loads(x) for x in metrics_path.read_text().splitlines()]
    summary = {"phase": phase, "steps": steps, "resumed_from_step": step0, "startup_seconds": startup,
               "wall_seconds": time.time() - t_start, "checkpoint": str(ckpt),
               "final_val_pass@1": {k[len("val_pass@1/"):]: v for k, v in all_m[-1].items() if k.startswith("val_pass@1/")}}
    (phase_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _append(path: Path, obj: dict) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(obj) + "\n")
