"""One CROPI training phase: GRPO on the selected prompts for E steps, with fresh vLLM rollouts.

Per step: draw B prompts from the selection (cropi.seeds.train_batch: a resumed phase draws the
same prompts); G rollouts each from the vLLM engines running the trainer's current weights;
rewards and group advantages; one optimizer step on the W DeepSpeed ranks; weight sync
trainer -> vLLM every `sync_every` steps; validation pass@1 every `eval_every`.
A DeepSpeed checkpoint every `save_every` steps lets a rerun resume mid-phase; the phase ends
with a Hugging Face checkpoint at PHASE_DIR/checkpoint that the next phase starts from, and
train_summary.json, written last, marks it complete.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch

from cropi import preempt, seeds
from cropi.algo.advantages import group_advantages
from cropi.algo.schedule import lr_at
from cropi.algo.grpo import normaliser
from cropi.data.dataset import PromptRow
from cropi.errors import CropiError
from cropi.store import records
from cropi.store.paths import RunPaths
from cropi.trainer import batching
from cropi.trainer.rollouts import carried_eval, evaluate, maybe_eval, read_val_names, rollout, split
from cropi.model.loading import load_tokenizer
from cropi.trainer.services import TrainingServices
from cropi.algo.dynamic import DynamicBatch


def _latest_tag(state_dir: Path) -> str | None:
    p = state_dir / "latest"
    return p.read_text().strip() if p.is_file() else None


def run_phase(cfg, phase: int, steps: int, pool: list[PromptRow], selected: list[int],
              val: dict[str, list[PromptRow]], start_ckpt: str, log=print, on_step=None, services=None) -> dict:
    """Train phase M for `steps` GRPO steps on `selected`; returns the summary (train_summary.json).
    `services` (a TrainingServices kept across phases) serves the engines and ranks; without it the
    phase starts its own and stops them at the end."""

    if not selected:
        raise CropiError(f"phase {phase}: the selection is empty; nothing to train on")
    by_id = {r.prompt_id: r for r in pool}
    missing = [i for i in selected if i not in by_id]
    if missing:
        raise CropiError(f"phase {phase}: selected prompt ids {missing[:5]} are not in the training pool")
    on_step = on_step or (lambda m: None)
    paths = RunPaths.of(cfg)
    tok = load_tokenizer(start_ckpt)
    state_dir, metrics_path = paths.trainer_state(phase), paths.train_metrics(phase)
    t_start = time.time()
    own = services is None
    if own:
        services = TrainingServices(cfg, start_ckpt, tag=f"phase{phase}")
    try:
        startup = services.begin_phase(start_ckpt)
        if not own and services.phases == 1:  # started by the caller for this phase: its start-up counts here
            t_start -= startup
        ckpt, step0 = _train(cfg, phase, steps, selected, by_id, tok, val, services, state_dir, metrics_path,
                             start_ckpt, log, on_step)
    finally:
        if own:
            services.close()
    all_m = records.rows(records.TRAIN_METRICS_ROW, metrics_path)
    summary = {"phase": phase, "steps": steps, "resumed_from_step": step0, "startup_seconds": startup,
               "wall_seconds": time.time() - t_start, "checkpoint": str(ckpt),
               "final_val_pass@1": {k: all_m[-1][f"val_pass@1/{k}"] for k in read_val_names(all_m[-1])}}
    records.write(records.TRAIN_SUMMARY, summary, paths.train_summary(phase))
    return summary


def _train(cfg, phase, steps, selected, by_id, tok, val, services, state_dir, metrics_path, start_ckpt, log,
           on_step) -> tuple:
    """Steps step0+1..steps of the phase (step0 from its last DeepSpeed checkpoint), then its HF
    checkpoint; -> (checkpoint path, step0)."""
    t, engines, group, link = cfg.trainer, services.engines, services.group, services.link
    step0, tag = 0, _latest_tag(state_dir)
    if tag is not None:
        step0 = group.load_state(str(state_dir), tag)
        link.push()
        log(f"phase {phase}: resumed from DeepSpeed checkpoint {tag} (step {step0})")
    # keep the metrics (and evaluations) of the steps that the checkpoint covers; the rest are redone
    records.rewrite(records.TRAIN_METRICS_ROW, covered(records.rows(records.TRAIN_METRICS_ROW, metrics_path), step0),
                    metrics_path)
    details = RunPaths.of(cfg).eval_details(phase)
    records.rewrite(records.EVAL_ROW, covered(records.rows(records.EVAL_ROW, details), step0), details)
    if step0 == 0 and not t.val_before_train:  # verl's val_before_train false: step 0 is logged, not evaluated
        m0 = {"phase": phase, "step": 0, "wall_time": time.time()}
        records.append(records.TRAIN_METRICS_ROW, m0, metrics_path)
        on_step(m0)
    elif step0 == 0:
        ev = carried_eval(cfg, phase, start_ckpt, details)
        if ev is None:
            ev = evaluate(engines, val, cfg, 0, details, phase)
        m0 = {"phase": phase, "step": 0, "wall_time": time.time(), **{f"val_pass@1/{k}": v for k, v in ev.items()},
              **{f"val-core/{k}/reward/mean@{cfg.trainer.eval_samples}": v for k, v in ev.items()}}
        records.append(records.TRAIN_METRICS_ROW, m0, metrics_path)
        on_step(m0)
        log(f"phase {phase} step 0: validation pass@1 " + " ".join(f"{k}={v:.3f}" for k, v in ev.items()))
    for step in range(step0 + 1, steps + 1):
        m = _step(cfg, phase, step, steps, selected, by_id, tok, services, val)
        stop = preempt.requested()  # read once: a SIGTERM that lands after this waits for the next step
        m["wall_time"] = time.time()
        # the row before the checkpoint: a kill between them leaves a row past the last checkpoint,
        # which a resume drops and redoes (covered), never a checkpoint whose step has no row
        records.append(records.TRAIN_METRICS_ROW, m, metrics_path)
        if step % t.save_every == 0 or step == steps or stop:
            group.save_state(str(state_dir), step)
        on_step(m)
        log(f"phase {phase} step {step}/{steps}: reward {m['reward_mean']:.3f} kl {m['kl']:.4f} "
            f"grad_norm {m['grad_norm']:.3f}" + "".join(f" {k}={v:.3f}" for k, v in m.items() if k.startswith("val_")))
        if stop and step < steps:
            raise preempt.Preempted(f"phase {phase} training after step {step} (its DeepSpeed checkpoint saved)")
    ckpt = RunPaths.of(cfg).checkpoint(phase)
    group.save_hf(str(ckpt), start_ckpt)
    services.phase_saved(str(Path(ckpt).resolve()))  # the last step synced these very weights (_step)
    return ckpt, step0


def covered(rows: list[dict], step0: int) -> list[dict]:
    """The logged rows a resume from DeepSpeed checkpoint step0 keeps: steps 0..step0. With no
    checkpoint (step0 0) none: step 0's evaluation is redone, so it must not be kept twice."""
    return [r for r in rows if step0 > 0 and r["step"] <= step0]


def _step(cfg, phase: int, step: int, steps: int, selected: list[int], by_id: dict, tok, services, val) -> dict:
    """One GRPO step: rollouts, advantages, the DeepSpeed step, weight sync, maybe eval; -> metrics.
    Colocated on GPU (services.sleeps) the engines sleep through the DeepSpeed step."""
    t, engines, group, link = cfg.trainer, services.engines, services.group, services.link
    timing = {}
    t0 = time.time()
    out, rewards, dyn = _rollouts(cfg, phase, step, selected, by_id, engines)
    timing["rollout_seconds"] = time.time() - t0
    m = {"phase": phase, "step": step, **dyn}
    if rewards.shape[0] == 0:  # dynamic sampling found no group with unequal rewards within its cap
        m.update(reward_mean=dyn["rollout_reward_mean"], loss=0.0, kl=0.0, clip_frac=0.0, entropy=0.0,
                 grad_norm=0.0, response_tokens=0, zero_adv_prompts=0, micro_batches=0, skipped_step=1, **timing)
        m["tokens_per_s"] = 0.0
        if step % t.sync_every == 0 or step == steps:  # the engines must hold the step's weights, as below
            link.push()
        return maybe_eval(cfg, engines, val, step, steps, m)
    adv, _, _ = group_advantages(rewards, t.adv_norm)  # [B, G]
    prompts = [p for p in out["prompt_ids"] for _ in range(t.group_size)]
    row_ids = [r for r in out["row_ids"] for _ in range(t.group_size)]
    responses = [r for g in out["response_ids"] for r in g]
    engine_lp = [lp for g in out["logprobs"] for lp in g]
    advs = adv.flatten().tolist()
    lengths = torch.tensor([len(r) for r in responses])
    mask = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]  # [B*G, T]
    shards = rank_shards(cfg, prompts, responses, advs, row_ids, engine_lp, mask, tok.pad_token_id)
    lr = lr_at(phase * t.steps_per_phase + step, t.lr, t.steps_per_phase * cfg.run.num_phases, t.lr_warmup_steps,
               t.lr_schedule, t.min_lr_ratio)
    for sh in shards:
        sh["lr"] = lr
    t0 = time.time()
    hang = cfg.run.hang_timeout_s
    if services.sleeps:
        engines.each(lambda e: e.sleep.remote(), timeout_s=hang, what="sleep")
    ranks = group.train_step(shards, 0.0)  # each mini-batch carries its own global normaliser
    if services.sleeps:
        engines.each(lambda e: e.wake_up.remote(["weights"]), timeout_s=hang, what="wake-up")
    timing["train_step_seconds"] = time.time() - t0
    timing["logprob_seconds"] = max(r["logprob_seconds"] for r in ranks)
    timing["train_seconds"] = max(r["train_seconds"] for r in ranks)
    ntok = sum(r["tokens"] for r in ranks)
    t0 = time.time()
    if step % t.sync_every == 0 or step == steps:
        link.push()
    if services.sleeps:
        engines.each(lambda e: e.wake_up.remote(["kv_cache"]), timeout_s=hang, what="wake-up")
    timing["sync_seconds"] = time.time() - t0
    m.update(_verl_names(out, rewards, responses, cfg.rollout.max_new_tokens))
    m.update({"reward_mean": float(rewards.mean()),
         "loss": sum(r["loss_sum"] for r in ranks), "kl": sum(r["kl_sum"] for r in ranks) / ntok,
         "clip_frac": sum(r["clip_sum"] for r in ranks) / ntok,
         "entropy": sum(r["entropy_sum"] for r in ranks) / ntok, "grad_norm": ranks[0]["grad_norm"],
         # the engines sampled with the weights synced after the last step: |their log-prob - the trainer's|
         "engine_logprob_gap": sum(r["engine_gap_sum"] for r in ranks) / ntok,
         "engine_logprob_gap_max": max(r["engine_gap_max"] for r in ranks),
         "response_tokens": ntok, "zero_adv_prompts": int((rewards.std(1) == 0).sum()),
         "micro_batches": ranks[0]["micro_batches"], "skipped_step": max(r["skipped_step"] for r in ranks),
         "lr": lr, "optimizer_steps": ranks[0].get("optimizer_steps", 1), **timing})
    m["tokens_per_s"] = ntok / max(sum(timing.values()), 1e-9)
    bad = [r["nonfinite"] for r in ranks if r.get("nonfinite") and r["nonfinite"]["prompt_ids"]]
    if m["skipped_step"] and bad:
        m["nonfinite"] = {"what": bad[0]["what"], "prompt_ids": sorted({i for b in bad for i in b["prompt_ids"]})}
        print(f"cropi: phase {phase} step {step}: non-finite {m['nonfinite']['what']} for prompts "
              f"{m['nonfinite']['prompt_ids'][:16]}; the step was not applied", flush=True)
    return maybe_eval(cfg, engines, val, step, steps, m)


def rank_shards(cfg, prompts, responses, advs, row_ids, engine_lp, mask, pad_id) -> list[dict]:
    """Each rank's part of the step's trajectories, cut into trainer.mini_batches mini-batches (whole
    prompt groups, each with its own global normaliser) and those into micro-batches of at most
    trainer.max_tokens_per_micro_batch padded tokens, the same count on every rank."""
    t = cfg.trainer
    const = t.loss_norm_constant or t.prompts_per_step * t.group_size * cfg.rollout.max_new_tokens
    n_prompts = len(responses) // t.group_size
    groups = [list(range(i * t.group_size, (i + 1) * t.group_size)) for i in range(n_prompts)]
    k = min(t.mini_batches, max(1, n_prompts))
    minis = [[s for g in groups[j::k] for s in g] for j in range(k)]  # sequence indices of each mini-batch
    ranks = [{"idx": [], "minis": []} for _ in range(t.world_size)]
    for seqs in minis:
        gnorm = normaliser(mask[seqs], t.loss_agg, const / k)
        parts = split(seqs, t.world_size)
        micro = batching.plan([[len(prompts[i]) + len(responses[i]) for i in ix] for ix in parts],
                              t.max_tokens_per_micro_batch)
        for r, (ix, mb) in enumerate(zip(parts, micro)):
            base = len(ranks[r]["idx"])
            ranks[r]["idx"] += ix
            ranks[r]["minis"].append({"micro": [[base + i for i in b] for b in mb], "norm": gnorm})
    return [{"prompt_ids": [prompts[i] for i in r["idx"]], "response_ids": [responses[i] for i in r["idx"]],
             "advantages": [advs[i] for i in r["idx"]], "row_ids": [row_ids[i] for i in r["idx"]], "pad_id": pad_id,
             "engine_logprobs": [engine_lp[i] for i in r["idx"]], "mini_batches": r["minis"]} for r in ranks]


def _verl_names(out: dict, rewards: torch.Tensor, responses: list[list[int]], max_new_tokens: int) -> dict:
    """The step's figures under verl's metric names too, and each weighted reward function's mean."""
    lengths = torch.tensor([len(r) for r in responses], dtype=torch.float64)
    trunc = [t for g in out.get("truncated") or [] for t in (g or [])]
    m = {"critic/score/mean": float(rewards.mean()), "critic/score/max": float(rewards.max()),
         "critic/score/min": float(rewards.min()), "response_length/mean": float(lengths.mean()),
         "response_length/max": float(lengths.max()), "response_length/min": float(lengths.min()),
         "response_length/clip_ratio": (sum(bool(t) for t in trunc) / len(trunc)) if trunc else
         float((lengths >= max_new_tokens).double().mean())}
    comps = [c for c in out.get("reward_components") or [] if c]
    for name in sorted({k for c in comps for k in c}):
        vals = [x for c in comps for x in c.get(name, []) if x == x]  # NaN (None) left out
        m[f"reward/{name}/mean"] = sum(vals) / len(vals) if vals else float("nan")
    return m


def _draw(rng: random.Random, selected: list[int], n: int) -> list[int]:
    return rng.sample(selected, n) if len(selected) >= n else [rng.choice(selected) for _ in range(n)]


def _rollouts(cfg, phase: int, step: int, selected: list[int], by_id: dict, engines) -> tuple[dict, torch.Tensor, dict]:
    """The step's groups: B prompts drawn from the selection (cropi.seeds.train_batch), G rollouts
    each; with trainer.dynamic_sampling, further rounds of B until B groups with unequal rewards
    are kept or the cap is reached (cropi.algo.dynamic). -> (rollouts, rewards [B', G], metrics)."""

    t = cfg.trainer
    rng = random.Random(seeds.train_batch(cfg.run.seed, phase, step))
    acc = DynamicBatch(t.prompts_per_step, t.dynamic_max_batches if t.dynamic_sampling else 0)
    all_rewards = []
    while True:
        ids = _draw(rng, selected, t.prompts_per_step)
        sd = [seeds.train_rollout(cfg.run.seed, phase, step, i, acc.rounds) for i in ids]
        out = rollout(engines, [by_id[i] for i in ids], t.group_size, cfg.rollout.temperature, sd,
                      "train" if acc.rounds == 0 else f"train/round{acc.rounds}", cfg.run.hang_timeout_s)
        rewards = torch.tensor(out["rewards"], dtype=torch.float64)  # [B, G]
        all_rewards.append(rewards)
        if not t.dynamic_sampling:
            break
        acc.add(out, rewards)
        if acc.done():
            break
    gen = torch.cat(all_rewards)
    dyn = {"rollout_prompts": int(gen.shape[0]), "rollout_reward_mean": float(gen.mean()),
           "rollout_zero_adv_prompts": int((gen.std(1) == 0).sum())}
    if t.dynamic_sampling:
        out, rewards = acc.batch()
        dyn["dynamic_rounds"] = acc.rounds
    dyn["trained_prompts"] = int(rewards.shape[0])
    return out, rewards, dyn
