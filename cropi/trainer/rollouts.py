"""The engines' side of a training phase: prompts spread over the vLLM engines and their results
joined in prompt order (`rollout`), and validation pass@1 (`evaluate`; every `eval_every`
steps: `maybe_eval`; step 0 of a later phase reuses the previous phase's last evaluation of the
same weights: `carried_eval`). The GRPO step itself: cropi.trainer.phase."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from cropi import seeds
from cropi.data.dataset import PromptRow
from cropi.store import records
from cropi.store.paths import RunPaths


def split(items: list, n: int) -> list[list]:
    """items dealt round-robin into n lists."""
    return [items[i::n] for i in range(n)]


def rollout(engines, rows: list[PromptRow], n: int, temperature: float, seeds_: list[int], where: str,
            timeout_s: float = 0.0) -> dict:
    """Spread prompts over the engines (a WorkerPool) and join their results in prompt order; an
    engine that takes longer than timeout_s (> 0) on its part is hung (cropi.pool)."""
    idx = [ix for ix in split(list(range(len(rows))), len(engines)) if ix]
    parts = engines.map(lambda e, ix: e.generate.remote([rows[i] for i in ix], n, temperature,
                                                        [seeds_[i] for i in ix], where),
                        idx, describe=lambda ix: f"{len(ix)} {where} prompts", timeout_s=timeout_s)
    out = {k: [None] * len(rows) for k in ("prompt_ids", "rewards", "response_ids", "logprobs", "truncated")}
    for ix, part in zip(idx, parts):
        for k in out:
            for j, i in enumerate(ix):
                out[k][i] = part[k][j]
        if "reward_components" in part:  # per prompt: {function: its G values}
            comps = out.setdefault("reward_components", [None] * len(rows))
            for j, i in enumerate(ix):
                comps[i] = {name: v[j] for name, v in part["reward_components"].items()}
    out["row_ids"] = [r.prompt_id for r in rows]
    return out


def evaluate(engines, val: dict[str, list[PromptRow]], cfg, step: int, details: Path | None = None,
             phase: int = 0) -> dict[str, float]:
    """pass@1 per validation set: mean reward of eval_samples samples per prompt. With `details`,
    each prompt's own pass rate is appended there (one line per evaluation), for standard errors
    and bootstraps over prompts (cropi.compare)."""
    res, per_prompt = {}, {}
    for name, rows in val.items():
        sd = [seeds.evaluation(cfg.run.seed, step, name, r.prompt_id) for r in rows]
        temp = cfg.rollout.temperature if cfg.trainer.val_temperature < 0 else cfg.trainer.val_temperature
        out = rollout(engines, rows, cfg.trainer.eval_samples, temp, sd, f"val/{name}", cfg.run.hang_timeout_s)
        rates = torch.tensor(out["rewards"], dtype=torch.float64).mean(1)  # [prompts]
        res[name] = float(rates.mean())
        per_prompt[name] = {"prompt_ids": [r.prompt_id for r in rows], "pass_rate": [round(x, 4) for x in rates.tolist()]}
    if details is not None:
        records.append(records.EVAL_ROW, {"phase": phase, "step": step, "samples": cfg.trainer.eval_samples,
                                          "sets": per_prompt}, details)
    return res


def carried_eval(cfg, phase: int, start_ckpt: str, details: Path) -> dict[str, float] | None:
    """Step 0 of a phase that starts from the previous phase's checkpoint evaluates the weights
    that phase's last step evaluated: reuse that evaluation (noted in eval.jsonl) instead of
    sampling it again; None when there is none to reuse."""
    paths = RunPaths.of(cfg)
    if phase == 0 or Path(start_ckpt).resolve() != paths.checkpoint(phase - 1).resolve():
        return None
    prev = [e for e in records.rows(records.EVAL_ROW, paths.eval_details(phase - 1)) if "copied_from" not in e]
    last = records.rows(records.TRAIN_METRICS_ROW, paths.train_metrics(phase - 1))
    if not prev or not last or prev[-1]["step"] != last[-1]["step"]:
        return None
    e = prev[-1]
    if e.get("samples") != cfg.trainer.eval_samples or sorted(e["sets"]) != sorted(read_val_names(last[-1])):
        return None
    records.append(records.EVAL_ROW, {**e, "phase": phase, "step": 0, "copied_from": {"phase": phase - 1, "step": e["step"]}},
                   details)
    return {name: last[-1][f"val_pass@1/{name}"] for name in e["sets"]}


def read_val_names(metrics: dict) -> list[str]:
    return [k[len("val_pass@1/"):] for k in metrics if k.startswith("val_pass@1/")]


def maybe_eval(cfg, engines, val, step: int, steps: int, m: dict) -> dict:
    if step % cfg.trainer.eval_every == 0 or step == steps:
        t0 = time.time()
        ev = evaluate(engines, val, cfg, step, RunPaths.of(cfg).eval_details(m["phase"]), m["phase"])
        m.update({f"val_pass@1/{k}": v for k, v in ev.items()}, eval_seconds=time.time() - t0)
        m.update({f"val-core/{k}/reward/mean@{cfg.trainer.eval_samples}": v for k, v in ev.items()})
    return m
