"""Real vocabulary, real lengths: the trainer step's memory under a token budget.

A random-init Qwen2-architecture model (vocabulary 151,936, tied embeddings, q/k/v biases;
hidden 128, 2 layers, so that the LM head dominates as it does at 1.5B) and responses of 1,024
tokens after 32-token prompts. Each row runs in a fresh child process and measures the peak RSS
above the process after set-up (Linux VmHWM, reset once the model, reference model and optimizer
exist) of one GRPO step: old, reference and current log-probs, the GRPO loss, backward, AdamW.

- micro-batched: trainer.max_tokens_per_micro_batch = BUDGET, chunked head (the shipped path);
- unbatched: the whole shard in one micro-batch, same chunked head;
- full logits: the path before this change (one forward with [N, L, V] float32 logits and their
  log-softmax per policy), where it fits.
Equality: the updated weights of the micro-batched step against the unbatched one (float32).
Usage: .venv/bin/python -m benchmarks.scale [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS, write_result

VOCAB, HIDDEN, LAYERS = 151_936, 128, 2
PROMPT, RESPONSE = 32, 1024
BUDGET, CHUNK = 4096, 1024


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _model(seed: int = 0):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      max_position_embeddings=PROMPT + RESPONSE + 8)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(cfg).float()


def _shard(n: int, seed: int = 1) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    lengths = [RESPONSE - (i * 37) % 128 for i in range(n)]  # ragged, up to RESPONSE
    return {"prompt_ids": [torch.randint(0, VOCAB, (PROMPT,), generator=g).tolist() for _ in range(n)],
            "response_ids": [torch.randint(0, VOCAB, (m,), generator=g).tolist() for m in lengths],
            "advantages": torch.randn(n, generator=g).tolist(), "pad_id": 0}


class _Trainer:
    """What grpo_step needs of the trainer config."""
    def __init__(self, budget: int, chunk: int):
        self.max_tokens_per_micro_batch, self.logits_chunk_tokens = budget, chunk
        self.eps_low = self.eps_high = 0.2
        self.kl_coef, self.loss_agg = 0.001, "token_mean"


def _legacy_step(model, ref, shard, opt):
    """The trainer step before this change: full [N, L, V] logits per policy, one pass."""
    import torch

    from cropi.algo.grpo import aggregate, token_loss
    from cropi.model.sequences import collate

    def logp_full(m, ids, attn, entropy=False):
        logsm = torch.log_softmax(m(input_ids=ids, attention_mask=attn).logits.float()[:, :-1], -1)
        lp = torch.nn.functional.pad(logsm.gather(-1, ids[:, 1:, None])[..., 0], (1, 0))
        if entropy:
            with torch.no_grad():
                _ = -(logsm.exp() * logsm).sum(-1)
        return lp

    ids, attn, target = collate(shard["prompt_ids"], shard["response_ids"], 0)
    adv = torch.tensor(shard["advantages"])
    with torch.no_grad():
        old, ref_lp = logp_full(model, ids, attn), logp_full(ref, ids, attn)
    logp = logp_full(model, ids, attn, entropy=True)
    loss_tok, _, _ = token_loss(logp, old, ref_lp, adv, 0.2, 0.2, 0.001)
    aggregate(loss_tok, target, "token_mean", float(target.sum()), 1).backward()
    opt.step()


def child(mode: str, n: int) -> dict:
    import torch

    from cropi.trainer import batching
    from cropi.trainer.step import Accumulator, grpo_step

    torch.set_num_threads(2)
    model, ref = _model(), _model().eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, eps=1.0)
    shard = _shard(n)
    lengths = [len(p) + len(r) for p, r in zip(shard["prompt_ids"], shard["response_ids"])]
    ntok = sum(len(r) for r in shard["response_ids"])
    base = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    t0 = time.perf_counter()
    if mode == "full_logits":
        _legacy_step(model, ref, shard, opt)
        micro = 1
    else:
        budget = BUDGET if mode == "micro_batched" else 0
        shard["micro_batches"] = batching.plan([lengths], budget)[0]
        grpo_step(Accumulator.plain(model, opt), ref, shard, _Trainer(budget, CHUNK), float(ntok), 1, "cpu")
        micro = len(shard["micro_batches"])
    dt = time.perf_counter() - t0
    return {"mode": mode, "sequences": n, "response_tokens": ntok, "micro_batches": micro,
            "peak_rss_above_setup_mib": round(_status_mb("VmHWM") - base, 1), "seconds": round(dt, 2),
            "ms_per_token": round(1000 * dt / ntok, 3)}


def equality(n: int) -> dict:
    """Updated weights after one micro-batched step vs one unbatched step, from the same start."""
    import torch

    from cropi.trainer import batching
    from cropi.trainer.step import Accumulator, grpo_step

    torch.set_num_threads(2)
    shard = _shard(n)
    lengths = [len(p) + len(r) for p, r in zip(shard["prompt_ids"], shard["response_ids"])]
    ntok = sum(len(r) for r in shard["response_ids"])
    weights = {}
    for budget in (0, BUDGET):
        model, ref = _model(), _model().eval().requires_grad_(False)
        start = {k: v.clone() for k, v in model.state_dict().items()}
        opt = torch.optim.SGD(model.parameters(), lr=1.0)  # the update is the gradient itself: the strictest check
        s = dict(shard, micro_batches=batching.plan([lengths], budget)[0])
        grpo_step(Accumulator.plain(model, opt), ref, s, _Trainer(budget, CHUNK), float(ntok), 1, "cpu")
        weights[budget] = {k: v - start[k] for k, v in model.state_dict().items()}
    rel = max(float((weights[BUDGET][k] - weights[0][k]).norm() / weights[0][k].norm().clamp(min=1e-30))
              for k in weights[0] if weights[0][k].norm() > 0)
    return {"sequences": n, "micro_batches": len(batching.plan([lengths], BUDGET)[0]),
            "max_relative_update_difference": rel}


INF_K, INF_BUDGET, INF_SPLIT_BUDGET = 4, 9000, 2200


class _Influence:
    """What the influence passes need of the config's influence section."""
    def __init__(self, budget: int):
        self.max_tokens_per_backward, self.logits_chunk_tokens = budget, CHUNK
        self.mode, self.grad_dtype, self.proj_dim, self.proj_kind = "exact", "float32", 1024, "rademacher"


def _influence_rows(prompts: int, seed: int, first_id: int = 0) -> list[dict]:
    import random

    rng = random.Random(seed)
    rows = []
    for p in range(prompts):
        prompt = [rng.randrange(VOCAB) for _ in range(PROMPT)]
        for k in range(INF_K):
            n = RESPONSE - rng.randrange(128)
            rows.append({"prompt_id": first_id + p, "prompt_ids": prompt,
                         "response_ids": [rng.randrange(VOCAB) for _ in range(n)],
                         "behavior_logp": [rng.uniform(-13.0, -11.0) for _ in range(n)],  # ~log(1/V): rho ~ 1
                         "advantage": rng.gauss(0, 1)})
    return rows


def influence_child(prompts: int, budget: int) -> dict:
    """Peak RSS and time of the influence engine (exact mode, p = 0.1) over `prompts` prompts."""
    import torch

    from cropi.influence.coords import sample_coordinates
    from cropi.influence.passes import score_rows, val_gradient

    torch.set_num_threads(2)
    model = _model().eval()
    coords = sample_coordinates(model, "linear", 0.1, seed=17)
    inf = _Influence(budget)
    val = {"v": val_gradient(model, coords, 0, _influence_rows(2, seed=99, first_id=10_000), _Influence(INF_BUDGET))}
    rows = _influence_rows(prompts, seed=1)
    ntok = sum(len(r["response_ids"]) for r in rows)
    base = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    t0 = time.perf_counter()
    out = score_rows(model, coords, 0, rows, inf, 29, val)
    dt = time.perf_counter() - t0
    from cropi.influence.trajectories import split_passes

    return {"mode": "influence", "prompts": prompts, "sequences": len(rows), "budget_tokens": budget,
            "passes": len(split_passes(rows, budget)), "response_tokens": ntok,
            "peak_rss_above_setup_mib": round(_status_mb("VmHWM") - base, 1), "seconds": round(dt, 2),
            "ms_per_token": round(1000 * dt / ntok, 3),
            "dots": out["dot__v"].tolist(), "norms": out["norm"].tolist(),
            "target_norm": float(sum(float((t.double() ** 2).sum()) for t in val["v"].values()) ** 0.5)}


def _run_child(*args) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--child", *map(str, args)],
                         capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        return {"mode": args[0], "sequences": args[1], "error": (out.stderr.strip().splitlines() or ["killed"])[-1],
                "returncode": out.returncode}
    return json.loads(out.stdout.strip().splitlines()[-1])


def plan_estimates(rows: list[dict]) -> None:
    """Add cropi.plan's estimate of each planned row's peak above set-up (gradients, AdamW states,
    one micro-batch's activations, the head chunk) and its ratio to the measured peak."""
    from cropi.model.sequences import budget_batches
    from cropi.plan import GIB, ModelShape

    shape = ModelShape.from_config(_model().config)
    for r in rows:
        if r.get("mode") not in ("micro_batched", "unbatched") or "peak_rss_above_setup_mib" not in r:
            continue
        shard = _shard(r["sequences"])
        lengths = [len(p) + len(q) for p, q in zip(shard["prompt_ids"], shard["response_ids"])]
        budget = BUDGET if r["mode"] == "micro_batched" else 0
        tokens = max(len(b) * lengths[b[0]] for b in budget_batches(lengths, budget))
        est = (shape.params * (4 + 8) + shape.activations(tokens, 4, False) + shape.head_chunk(CHUNK)) / GIB * 1024
        r["plan_estimate_mib"] = round(est, 1)
        r["plan_over_measured"] = round(est / r["peak_rss_above_setup_mib"], 3)


def plan_influence(r: dict) -> None:
    """cropi.plan's gradient-actor estimate above set-up (activations of one pass, the head chunk,
    per-prompt sampled gradients of the largest layer) next to the measured peak."""
    from cropi.influence.trajectories import split_passes
    from cropi.plan import GIB, INFLUENCE_HEAD_COPIES, ModelShape

    if "peak_rss_above_setup_mib" not in r:
        return
    shape = ModelShape.from_config(_model().config)
    rows = _influence_rows(r["prompts"], seed=1)
    tokens, prompts = 0, 0
    for part, _ in split_passes(rows, r["budget_tokens"]):
        tokens = max(tokens, len(part) * max(len(x["prompt_ids"]) + len(x["response_ids"]) for x in part))
        prompts = max(prompts, len({x["prompt_id"] for x in part}))
    est = (shape.activations(tokens, 4, False) + shape.head_chunk(CHUNK, INFLUENCE_HEAD_COPIES)
           + prompts * 0.1 * shape.largest_matrix * 4)
    r["plan_estimate_mib"] = round(est / GIB * 1024, 1)
    r["plan_over_measured"] = round(r["plan_estimate_mib"] / r["peak_rss_above_setup_mib"], 3)


def _plot(rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for mode, style in (("micro_batched", "o-"), ("unbatched", "s--"), ("full_logits", "x:")):
        pts = sorted((r["sequences"], r["peak_rss_above_setup_mib"] / 1024) for r in rows
                     if r["mode"] == mode and "peak_rss_above_setup_mib" in r)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=mode.replace("_", " "))
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"sequences per rank ({PROMPT} + up to {RESPONSE} tokens)")
    ax.set_ylabel("peak RSS of one GRPO step, GiB")
    ax.set_title(f"trainer step at vocabulary {VOCAB:,}: budget {BUDGET} tokens, head chunk {CHUNK}", fontsize=10)
    ax.legend()
    FigureCanvasAgg(fig).print_png(str(path))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", nargs=2)
    ap.add_argument("--equality", type=int)
    ap.add_argument("--quick", action="store_true", help="fewer rows (CI smoke)")
    ap.add_argument("--influence-only", action="store_true", help="only the influence rows")
    args = ap.parse_args()
    if args.child:
        if args.child[0].startswith("influence"):
            print(json.dumps(influence_child(int(args.child[1]), int(args.child[0].split(":")[1]))))
        else:
            print(json.dumps(child(args.child[0], int(args.child[1]))))
        return
    if args.influence_only:
        return _influence_main(args.quick)
    if args.equality:
        print(json.dumps(equality(args.equality)))
        return
    sizes = [2, 8] if args.quick else [2, 4, 8, 16, 32]
    rows = []
    for n in sizes:
        for mode in ("micro_batched", "unbatched", "full_logits"):
            if (mode == "unbatched" and n > 8) or (mode == "full_logits" and n > 4):  # would not fit in 24 GiB
                continue
            reps = [_run_child(mode, n) for _ in range(1 if args.quick or n > 8 else 2)]
            ok = [r for r in reps if "error" not in r]
            row = dict(ok[0] if ok else reps[0])
            if len(ok) > 1:
                row["ms_per_token_runs"] = [r["ms_per_token"] for r in ok]
                row["ms_per_token"] = round(statistics.mean(row["ms_per_token_runs"]), 3)
                row["peak_rss_runs_mib"] = [r["peak_rss_above_setup_mib"] for r in ok]
            print(json.dumps(row), flush=True)
            rows.append(row)
    eq = json.loads(subprocess.run([sys.executable, "-m", "benchmarks.scale", "--equality", "4"],
                                   capture_output=True, text=True, timeout=1800, check=True).stdout.strip().splitlines()[-1])
    by = {(r["mode"], r["sequences"]): r for r in rows if "ms_per_token" in r}
    ratios = {n: round(by["micro_batched", n]["ms_per_token"] / by["unbatched", n]["ms_per_token"], 3)
              for n in sizes if ("micro_batched", n) in by and ("unbatched", n) in by}
    micro = [r["peak_rss_above_setup_mib"] for r in rows if r["mode"] == "micro_batched" and "peak_rss_above_setup_mib" in r
             and r["micro_batches"] > 1]
    RESULTS.mkdir(parents=True, exist_ok=True)
    plan_estimates(rows)
    _plot(rows, RESULTS / "scale_trainer.png")
    write_result("scale_trainer", {
        "model": f"random-init Qwen2 architecture, vocab {VOCAB}, hidden {HIDDEN}, {LAYERS} layers, tied embeddings, float32",
        "sequence": f"{PROMPT} prompt + {RESPONSE - 127}..{RESPONSE} response tokens",
        "budget_tokens": BUDGET, "logits_chunk_tokens": CHUNK, "rows": rows,
        "micro_batched_over_unbatched_time_per_token": ratios,
        "micro_batched_peak_spread_once_above_budget": (round(max(micro) / min(micro), 3) if micro else None),
        "equality": eq})


def _influence_main(quick: bool) -> None:
    rows = []
    for prompts, budget in ([(2, 0), (2, INF_BUDGET), (2, INF_SPLIT_BUDGET), (8, INF_BUDGET)] if quick else
                            [(2, 0), (2, INF_BUDGET), (2, INF_SPLIT_BUDGET), (8, INF_BUDGET), (16, INF_BUDGET),
                             (8, INF_SPLIT_BUDGET)]):
        r = _run_child(f"influence:{budget}", prompts)
        print(json.dumps({k: v for k, v in r.items() if k not in ("dots", "norms")}), flush=True)
        plan_influence(r)
        rows.append(r)
    ref = next(r for r in rows if r.get("budget_tokens") == 0)

    def rel(a, b):
        return max(abs(x - y) / max(abs(y), 1e-30) for x, y in zip(a, b))

    def cos_err(r):  # what selection uses: the error of cos(g, v) = dot / (||g|| ||v||)
        return max(abs(a - b) / (n * ref["target_norm"]) for a, b, n in zip(r["dots"], ref["dots"], ref["norms"]))

    same = {f"budget {r['budget_tokens']}": {"dots": rel(r["dots"], ref["dots"]), "norms": rel(r["norms"], ref["norms"]),
                                             "cosine_abs": cos_err(r),
                                             "cosines": [d / (n * ref["target_norm"]) for d, n in zip(ref["dots"], ref["norms"])]}
            for r in rows if r.get("prompts") == 2 and r is not ref and "dots" in r}
    peaks = [r["peak_rss_above_setup_mib"] for r in rows if r.get("budget_tokens") == INF_BUDGET]
    t = {r["budget_tokens"]: r["ms_per_token"] for r in rows if r.get("prompts") == 2 and "ms_per_token" in r}
    write_result("scale_influence", {
        "model": f"random-init Qwen2 architecture, vocab {VOCAB}, hidden {HIDDEN}, {LAYERS} layers, tied embeddings, float32",
        "mode": "exact, sample_ratio 0.1, one validation target", "trajectories_per_prompt": INF_K,
        "sequence": f"{PROMPT} prompt + {RESPONSE - 127}..{RESPONSE} response tokens",
        "budget_tokens": INF_BUDGET, "split_budget_tokens": INF_SPLIT_BUDGET, "logits_chunk_tokens": CHUNK,
        "rows": [{k: v for k, v in r.items() if k not in ("dots", "norms", "target_norm")} for r in rows],
        "max_relative_difference_to_unbatched_2_prompts": same,
        "peak_spread_at_budget": round(max(peaks) / min(peaks), 3) if peaks else None,
        "time_per_token_over_unbatched": {f"budget {b}": round(v / t[0], 3) for b, v in t.items() if b and 0 in t}})


if __name__ == "__main__":
    main()
