"""`cropi make-base-model`: a tiny policy (Llama or Qwen2) that can already solve some of the tasks.

A random model passes ~0% of prompts, so every GRPO advantage would be zero. We train a
tokenizer on the task text, build a small random-init causal LM (`base_model.architecture`), and give it a short
supervised warm start on the training pool (loss on answer tokens only), checking the sampled
pass rate of every validation set as it goes. It stops as soon as every rate lies in
[base_model.target_pass_low, target_pass_high]; if that never happens it keeps the checkpoint
seen closest to that band. Deterministic for a seed on a given machine.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import torch

from cropi import seeds
from cropi.config import BASE_MODEL, Config
from cropi.data.dataset import PromptRow, render_prompt
from cropi.data.rewards import load_reward, score
from cropi.data.tasks import make_conflict_problem, make_problem, near_miss
from cropi.model.tokenizer import check_reloads, train_tokenizer
from cropi.store import records
from cropi.store.files import atomic_dir
from cropi.model.sequences import collate

MARKER = "cropi_base_model.json"


def base_model_hash(cfg: Config) -> str:
    """What the tiny model is built from: the fields declared to feed it (cropi.config)."""
    return cfg.artifact_hash(BASE_MODEL)


def sft_batch(tok, rows: list[PromptRow], answer_template: str = "{}") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels) with labels -100 on the prompt and padding."""

    prompts = [tok(render_prompt(r.messages, tok))["input_ids"] for r in rows]
    answers = [tok(answer_template.format(r.ground_truth), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
               for r in rows]
    ids, mask, target = collate(prompts, answers, tok.pad_token_id)
    return ids, mask, torch.where(target, ids, torch.full_like(ids, -100))


@torch.no_grad()
def sample_pass_rate(model, tok, rows: list[PromptRow], reward_fn, n: int, temperature: float,
                     max_new_tokens: int, seed: int) -> float:
    """Mean reward of n samples per prompt, drawn with Hugging Face generate."""
    model.eval()
    texts = [render_prompt(r.messages, tok) for r in rows for _ in range(n)]
    flat = [r for r in rows for _ in range(n)]
    enc = tok(texts, return_tensors="pt", padding=True)
    with seeds.torch_seeded(seed):
        out = model.generate(**enc, do_sample=True, temperature=temperature, top_p=1.0, top_k=0,
                             max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
    resp = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    model.train()
    return sum(score(reward_fn, text, r.ground_truth, f"warm-start eval prompt {r.prompt_id}", r.data_source,
                     r.extra_info) for text, r in zip(resp, flat)) / len(texts)


def _fresh_problems(cfg: Config, val: dict[str, list[PromptRow]], rng: random.Random):
    """A stream of new synthetic problems (never a validation prompt). Warm-starting on the
    training pool itself would memorise it: every pool prompt would then pass K of K samples,
    and its advantage, hence its influence gradient, would be zero. The stream may carry habits
    (base_model.warm_start_near_miss_share near misses, warm_start_conflict_share reversed answers)
    that RL on clean data removes and a noisy pool's bad prompts reward."""
    held_out = {r.messages[-1]["content"] for rows in val.values() for r in rows}

    d, b = cfg.data, cfg.base_model

    def draw(n: int) -> list[PromptRow]:
        rows = []
        while len(rows) < n:
            if d.conflict_of and rng.random() < b.warm_start_conflict_share:  # the conflicting rule
                fam, (expr, ans, _) = d.conflict_of, make_conflict_problem(d.conflict_of, rng)
            else:
                fam = rng.choice(d.families)
                expr, ans, _ = make_problem(fam, rng)
                if b.warm_start_near_miss_share and rng.random() < b.warm_start_near_miss_share:  # the near-miss habit
                    ans = near_miss(ans, rng)
            if expr not in held_out:
                rows.append(PromptRow(-1, fam, [{"role": "user", "content": expr}], str(ans)))
        return rows

    return draw


def _band_distance(rates: dict[str, float], lo: float, hi: float) -> float:
    return sum(max(0.0, lo - r) + max(0.0, r - hi) for r in rates.values())


def model_config(m, tok, max_len: int):
    """The tiny model's transformers config: Llama with an untied head, or Qwen2 as released
    (tied embeddings, biases on q/k/v)."""
    from transformers import LlamaConfig, Qwen2Config

    common = dict(vocab_size=len(tok), hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
                  num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads, num_key_value_heads=m.num_heads,
                  max_position_embeddings=max_len, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id)
    if m.architecture == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=True)
    return LlamaConfig(**common, tie_word_embeddings=False)


def build_base_model(cfg: Config, train: list[PromptRow], val: dict[str, list[PromptRow]],
                     out_dir: str | Path, log=print) -> dict:
    """Build, warm-start and save the tiny model; returns the marker info (pass rates, timings)."""
    from transformers import AutoModelForCausalLM

    m, seed = cfg.base_model, cfg.run.seed
    t0 = time.time()
    texts = [render_prompt(r.messages) + m.answer_template.format(r.ground_truth) for r in train]
    tok = train_tokenizer(texts, m.vocab_size, m.architecture)
    mcfg = model_config(m, tok, cfg.rollout.max_model_len)
    with tempfile.TemporaryDirectory() as probe:  # what vLLM and the trainers will load encodes as tok does
        mcfg.save_pretrained(probe)
        tok.save_pretrained(probe)
        check_reloads(tok, probe, texts + [render_prompt(r.messages) for rows in val.values() for r in rows])
    with seeds.torch_seeded(seeds.base_model_init(seed)):
        model = AutoModelForCausalLM.from_config(mcfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    opt = torch.optim.AdamW(model.parameters(), lr=m.warm_start_lr, weight_decay=0.0)
    reward_fn = load_reward(cfg.data)
    rng = random.Random(seeds.warm_start_data(seed))
    draw = _fresh_problems(cfg, val, rng) if cfg.data.synthetic else (lambda n: rng.sample(train, min(n, len(train))))
    eval_rows = {name: rows[: min(len(rows), 64)] for name, rows in val.items()}
    best = (float("inf"), None, None, 0)
    history = []
    model.train()
    for step in range(1, m.warm_start_steps + 1):
        ids, mask, lab = sft_batch(tok, draw(m.warm_start_batch), m.answer_template)
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % m.warm_start_eval_every and step != m.warm_start_steps:
            continue
        rates = {name: sample_pass_rate(model, tok, rows, reward_fn, n=4, temperature=cfg.rollout.temperature,
                                        max_new_tokens=cfg.rollout.max_new_tokens, seed=seeds.warm_start_eval(seed, step))
                 for name, rows in eval_rows.items()}
        dist = _band_distance(rates, m.target_pass_low, m.target_pass_high)
        history.append({"step": step, "loss": round(loss.item(), 4), **{k: round(v, 3) for k, v in rates.items()}})
        log(f"warm start step {step}: loss {loss.item():.3f} pass rates " +
            " ".join(f"{k}={v:.2f}" for k, v in rates.items()))
        if dist < best[0]:
            best = (dist, {k: v.detach().clone() for k, v in model.state_dict().items()}, rates, step)
        if dist == 0.0:
            break
    model.load_state_dict(best[1])
    info = {
        "config_hash": base_model_hash(cfg),
        "seed": seed,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "warm_start_steps": best[3],
        "pass_rates": best[2],
        "in_target_band": best[0] == 0.0,
        "build_seconds": round(time.time() - t0, 2),
        "history": history,
    }
    with atomic_dir(out_dir) as tmp:  # a model directory that exists is whole
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        records.write(records.BASE_MODEL_MARKER, info, tmp / MARKER)
    return info


def read_marker(model_dir: str | Path) -> dict | None:
    return records.read_if(records.BASE_MODEL_MARKER, Path(model_dir) / MARKER)
