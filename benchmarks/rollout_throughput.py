"""Rollout throughput: the N-worker vLLM buffer build vs plain `transformers.generate`.

Same prompts (the first P training prompts of the tiny suite), same K, temperature and
max_new_tokens, measured side by side in one run on the tiny model:
  - hf_generate: one process, batched `model.generate(do_sample=True)`, no Ray;
  - vllm_one_engine_generation_only: the same sampling in one in-process engine, start-up
    excluded (what a warm rollout worker does);
  - vllm_buffer_N: `build_buffer` end to end with N BufferWriter actors (Ray and engine
    start-up, rewards, HF log-prob recompute and Parquet writing included).
Also: bytes on disk per 1,000 trajectories.
Usage: .venv/bin/python -m benchmarks.rollout_throughput [--prompts 512]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import write_result
from cropi.config import load_config
from cropi.data.dataset import render_prompt
from cropi.data.suite import load_data


def hf_generate(cfg, rows, batch: int) -> dict:
    from cropi.model.loading import load_model, load_tokenizer

    tok, model = load_tokenizer(cfg.model.path), load_model(cfg.model.path).eval()
    k = cfg.rollout.k_train
    texts = [render_prompt(r.messages, tok) for r in rows for _ in range(k)]
    t0, ntok = time.time(), 0
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            enc = tok(texts[i:i + batch], return_tensors="pt", padding=True)
            out = model.generate(**enc, do_sample=True, temperature=cfg.rollout.temperature, top_k=0,
                                 max_new_tokens=cfg.rollout.max_new_tokens, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id)
            gen = out[:, enc["input_ids"].shape[1]:]
            # tokens up to and including the first EOS count as generated
            ended = (gen == tok.eos_token_id).cumsum(1)
            ntok += int(((ended == 0) | ((ended == 1) & (gen == tok.eos_token_id))).sum())
    dt = time.time() - t0
    return {"seconds": round(dt, 2), "generated_tokens": ntok, "tokens_per_s": round(ntok / dt, 1)}


def vllm_in_process(cfg, rows) -> dict:
    """Generation only, one engine, start-up excluded."""
    from cropi.model.loading import load_tokenizer
    from cropi.rollout.engine import make_llm, sample_groups

    tok = load_tokenizer(cfg.model.path)
    t0 = time.time()
    llm = make_llm(cfg, cfg.model.path, seed=0)
    startup = time.time() - t0
    ids = [tok(render_prompt(r.messages, tok))["input_ids"] for r in rows]
    sample_groups(llm, ids[:8], 2, cfg.rollout.temperature, 1.0, cfg.rollout.max_new_tokens, list(range(8)))  # warm-up
    t0 = time.time()
    groups = sample_groups(llm, ids, cfg.rollout.k_train, cfg.rollout.temperature, 1.0,
                           cfg.rollout.max_new_tokens, list(range(len(ids))))
    dt = time.time() - t0
    ntok = sum(len(s.token_ids) for g in groups for s in g)
    del llm
    return {"startup_seconds": round(startup, 2), "seconds": round(dt, 2), "generated_tokens": ntok,
            "tokens_per_s": round(ntok / dt, 1)}


def vllm_buffer(cfg, workers: int, hf_recompute: bool) -> dict:
    """End to end: Ray start, engine start-up, generation, rewards, HF recompute, Parquet."""
    import copy

    from cropi.rollout.build import build_buffer

    run = Path(tempfile.mkdtemp(prefix="cropi-bench-"))
    try:
        c = copy.deepcopy(cfg)
        c.run.dir = str(run)
        c.resources.rollout.num_workers, c.resources.rollout.num_cpus = workers, 2 / workers
        c.rollout.hf_recompute = hf_recompute
        t0 = time.time()
        m = build_buffer(c.validate(), progress=False)
        dt = time.time() - t0
        ntraj = sum(s["num_trajectories"] for s in m["splits"].values())
        ntok = sum(s["num_response_tokens"] for s in m["splits"].values())
        size = sum(p.stat().st_size for p in (run / "buffer").rglob("*.parquet"))
        return {"workers": workers, "hf_recompute": hf_recompute, "wall_seconds": round(dt, 2),
                "trajectories": ntraj, "generated_tokens": ntok, "end_to_end_tokens_per_s": round(ntok / dt, 1),
                "bytes_per_1000_trajectories": round(size / ntraj * 1000)}
    finally:
        shutil.rmtree(run, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=512)
    args = ap.parse_args()
    cfg = load_config("configs/tiny-cpu.yaml", ["data.val_size=8"])
    train, _ = load_data(cfg)
    rows = train[: args.prompts]
    torch.set_num_threads(2)
    res = {"prompts": len(rows), "k": cfg.rollout.k_train, "max_new_tokens": cfg.rollout.max_new_tokens,
           "temperature": cfg.rollout.temperature}
    res["hf_generate"] = hf_generate(cfg, rows, batch=512)
    res["vllm_one_engine_generation_only"] = vllm_in_process(cfg, rows)
    sub = load_config("configs/tiny-cpu.yaml", [f"data.train_size={len(rows)}", "data.val_size=8",
                                                "data.data_dir=artifacts/bench-tasks"])
    res["vllm_buffer_1_worker"] = vllm_buffer(sub, 1, hf_recompute=True)
    res["vllm_buffer_2_workers"] = vllm_buffer(sub, 2, hf_recompute=True)
    res["vllm_buffer_1_worker_no_hf_recompute"] = vllm_buffer(sub, 1, hf_recompute=False)
    res["speedup_vllm_generation_vs_hf_generate"] = round(
        res["vllm_one_engine_generation_only"]["tokens_per_s"] / res["hf_generate"]["tokens_per_s"], 2)
    write_result("rollout_throughput", res)


if __name__ == "__main__":
    main()
