"""Influence engine cost: batched exact/projected modes and the per-prompt reference vs the floor.

Floor = one plain forward + backward of the same objective over the same tokens with ordinary
parameter .grad (what computing the batch's *summed* gradient costs). Three model sizes:
  - tiny: the tiny checkpoint's shape (~0.4M params; hidden 128, 2 layers), 64 prompts x 8;
  - 25m:  a random Llama (hidden 512, MLP 1376, 8 layers, ~25M params), 16 prompts x 8;
  - qwen2-151k: benchmarks/scale.py's random Qwen2 (vocabulary 151,936, tied embeddings, hidden
    128, 2 layers, ~19.7M params, the head dominating as at 1.5B), 2 prompts x 4 trajectories of
    32 prompt + 897-1,024 response tokens (~7.8k tokens in one pass). Dense [N, L, V] logits
    would need ~5 GB per copy, so its floor runs the head 1,024 positions at a time without
    recompute (chunked_floor); `trainer_path` is the trainer's chunked head, which recomputes
    each chunk in backward. No reference there (per-prompt dense logits; too slow).
Tiny and 25m prompts look like the task suite ("417*23=", 6-9 byte tokens), responses 2-8
tokens, every prompt with mixed rewards (non-zero advantages, so no prompt is skipped).
Influence settings: params=linear, sample ratio p=0.1, k=1024, float32 gradients; `projected`
is the dense Rademacher projection (exact int8 GEMM; Gaussian runs the same GEMM), `sjlt` the
sparse JL map (influence.proj_kind: sjlt).
Timing: one subprocess per size runs the four methods interleaved, round by round, after a
warm-up (torch.set_num_threads(2)); reported are each method's best time over the rounds and
the median and the min-max of its per-round ratio to that round's floor, 7 rounds at 25m (the machine may be shared: the load
average is recorded). Memory: one subprocess per (size, method), peak RSS (VmHWM, reset once
model, data and validation gradient exist) minus the RSS then, so one-time library buffers
count too. Also reported:
the projection's achieved FLOP/s alone (2*B*D*k per second, generation included) for B = the
batch's prompts and B = 64, next to a plain float32 2048^3 matmul measured in the same process.
Usage: .venv/bin/python -m benchmarks.influence_engine [--sizes tiny,25m,qwen2-151k]
(a run of some sizes keeps the others' last results in the JSON; each size's ratios come from one run)   (writes results/influence_engine.{json,png})
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, write_result

SIZES = {
    "tiny": dict(prompts=64, k=8, hidden=128, inter=256, layers=2, heads=4, repeats=7),
    "25m": dict(prompts=16, k=8, hidden=512, inter=1376, layers=8, heads=8, repeats=7),
    "qwen2-151k": dict(prompts=2, k=4, repeats=3, real_vocab=True),
}
METHODS = ("floor", "exact", "projected", "sjlt", "reference")
HEAD_CHUNK = 1024
RATIO, PROJ_DIM, SEED = 0.1, 1024, 0
CKPT = Path(__file__).resolve().parents[1] / "artifacts" / "base-model"


def build_model(size: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    s = SIZES[size]
    if s.get("real_vocab"):
        from benchmarks.scale import _model
        return _model(SEED)
    if size == "tiny" and CKPT.is_dir():
        from cropi.model.loading import load_model
        return load_model(CKPT)
    torch.manual_seed(SEED)
    cfg = LlamaConfig(vocab_size=259, hidden_size=s["hidden"], intermediate_size=s["inter"], num_hidden_layers=s["layers"],
                      num_attention_heads=s["heads"], num_key_value_heads=s["heads"], max_position_embeddings=128,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(cfg)


def build_batch(model, prompts: int, k: int, seed: int, real_vocab: bool = False):
    """Task-like byte-token prompts and responses; behavior log-probs = model's own + noise.
    real_vocab: scale.py's random 1k-token rows (behavior log-probs ~ log(1/V), ratios ~ 1)."""
    from cropi.influence.trajectories import make_batch
    from tests.support.reference_engine import dense_logp

    if real_vocab:
        from benchmarks.scale import _influence_rows
        rows = _influence_rows(prompts, seed)
        assert all(len(r) == 1 for r in [{r["prompt_id"] for r in rows[i * k:(i + 1) * k]} for i in range(prompts)])
        return make_batch(rows, pad_id=0)[0]

    rng = random.Random(seed)
    rows = []
    for pid in range(prompts):
        text = f"{rng.randint(0, 999)}{rng.choice('+-*')}{rng.randint(0, 99)}="
        prompt = [1] + [b + 3 for b in text.encode()]
        rewards = [1.0] + [0.0] + [float(rng.random() < 0.4) for _ in range(k - 2)]  # mixed: A != 0
        mean = sum(rewards) / k
        std = (sum((r - mean) ** 2 for r in rewards) / (k - 1)) ** 0.5
        for r in rewards:
            resp = [b + 3 for b in str(rng.randint(0, 10 ** rng.randint(0, 6))).encode()] + [2]
            rows.append(dict(prompt_ids=prompt, response_ids=resp, behavior_logp=[0.0] * len(resp),
                             advantage=(r - mean) / (std + 1e-6), prompt_id=pid))
    batch, _ = make_batch(rows, pad_id=0)
    with torch.no_grad():
        batch.behavior_logp = torch.where(batch.target_mask, dense_logp(model, batch) + 0.05 * torch.randn_like(batch.behavior_logp), 0.0)
    return batch



def best_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20


def chunked_floor(model, batch) -> None:
    """The summed gradient into ordinary .grad with the head run HEAD_CHUNK response positions at
    a time: each chunk's logits, backward into the head weight and dJ/dh, then dropped (no
    recompute); then one backward through the body from dJ/dh. The least work a bounded-memory
    gradient at this vocabulary takes: the engine's schedule without per-prompt capture."""
    from cropi.influence.objective import offpolicy_objective, token_logp, token_weights
    from cropi.model.sequences import lm_head

    hidden = model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              use_cache=False).last_hidden_state  # [N, L, H]
    n, j = torch.nonzero(batch.target_mask, as_tuple=True)  # [T]
    h = hidden[n, j - 1]  # [T, H]
    targets, beta = batch.input_ids[n, j], batch.behavior_logp[n, j]
    w = token_weights(batch.target_mask, batch.advantage, batch.prompt_index, batch.num_prompts)[n, j]  # [T]
    h_leaf = h.detach().requires_grad_(True)
    head = lm_head(model)
    for c in range(0, h.shape[0], HEAD_CHUNK):
        sl = slice(c, c + HEAD_CHUNK)
        lp = token_logp(head(h_leaf[sl]), targets[sl])[None]  # [1, C]
        ones = torch.ones_like(lp, dtype=torch.bool)
        offpolicy_objective(lp, beta[sl][None], w[sl][None], ones, torch.zeros_like(lp, dtype=torch.long), 1).sum().backward()
    h.backward(h_leaf.grad)


def setup(size: str):
    from cropi.influence import gradients
    from cropi.influence.coords import sample_coordinates
    from tests.support import reference_engine as reference
    from tests.support.reference_engine import prompt_objective

    from cropi.model.sequences import response_logprobs

    torch.set_num_threads(2)
    s = SIZES[size]
    real = bool(s.get("real_vocab"))
    model = build_model(size)
    batch = build_batch(model, s["prompts"], s["k"], SEED, real)
    coords = sample_coordinates(model, "linear", RATIO, SEED)
    val_batch = build_batch(model, 1 if real else 8, s["k"], SEED + 1, real)
    val = {"val": gradients.validation_mean_gradient(model, [val_batch], coords, head_chunk_tokens=HEAD_CHUNK)}
    kw = dict(proj_dim=PROJ_DIM, seed=SEED, grad_dtype="float32", head_chunk_tokens=HEAD_CHUNK)

    def floor():
        model.zero_grad(set_to_none=True)
        if real:
            chunked_floor(model, batch)
        else:
            prompt_objective(reference.dense_logp(model, batch), batch).sum().backward()

    def trainer_path():  # the trainer's chunked head: recomputed in backward by activation checkpointing
        model.zero_grad(set_to_none=True)
        logp = response_logprobs(model, batch.input_ids, batch.attention_mask, batch.target_mask, HEAD_CHUNK)
        prompt_objective(logp, batch).sum().backward()

    fns = {"floor": floor,
           "exact": lambda: gradients.prompt_scores(model, batch, coords, "exact", val_grads=val, **kw),
           "projected": lambda: gradients.prompt_scores(model, batch, coords, "projected", proj_kind="rademacher", **kw),
           "sjlt": lambda: gradients.prompt_scores(model, batch, coords, "projected", proj_kind="sjlt", **kw)}
    if real:
        fns["trainer_path"] = trainer_path
    else:
        fns["reference"] = lambda: reference.prompt_scores(model, batch, coords, "exact", val_grads=val,
                                                           proj_dim=PROJ_DIM, seed=SEED, grad_dtype="float32")
    return model, batch, coords, fns


def timing_worker(size: str) -> dict:
    """All methods interleaved round by round, so that load from other processes on a shared
    machine hits them alike; each method's best time and the median over rounds of its time
    divided by the same round's floor."""
    from cropi.influence.coords import total_dim
    from cropi.influence.projection import project

    model, batch, coords, fns = setup(size)
    for fn in fns.values():
        fn()
    rounds = {m: [] for m in fns}
    for _ in range(SIZES[size]["repeats"]):
        for m in fns:
            t0 = time.perf_counter()
            fns[m]()
            rounds[m].append(time.perf_counter() - t0)
    out = {"size": size, "params": sum(p.numel() for p in model.parameters()), "rows": batch.num_rows,
           "prompts": batch.num_prompts, "tokens": int(batch.attention_mask.sum()), "sampled_dim": total_dim(coords),
           "seconds_best": {m: min(v) for m, v in rounds.items()},
           "ratio_best": {m: min(v) / min(rounds["floor"]) for m, v in rounds.items()},
           "ratio_median_paired": {m: statistics.median(t / f for t, f in zip(v, rounds["floor"])) for m, v in rounds.items()},
           "ratio_paired_min_max": {m: [min(t / f for t, f in zip(v, rounds["floor"])),
                                        max(t / f for t, f in zip(v, rounds["floor"]))] for m, v in rounds.items()},
           "rounds": SIZES[size]["repeats"],
           "load_avg_1min": float(open("/proc/loadavg").read().split()[0])}
    proj = {}
    for rows in sorted({batch.num_prompts, 64}):
        x = torch.randn(rows, out["sampled_dim"])
        t = best_time(lambda: project(x, PROJ_DIM, "rademacher", SEED), 3)
        proj[rows] = {"seconds": t, "flops": 2 * rows * out["sampled_dim"] * PROJ_DIM / t}
    a = torch.randn(2048, 2048)
    out["projection"] = {"rows": proj, "matmul_fp32_2048_flops": 2 * 2048 ** 3 / best_time(lambda: a @ a, 5)}
    return out


def memory_worker(size: str, method: str) -> dict:
    """Peak RSS of one method alone: the high-water mark over two calls (Linux VmHWM, reset after
    set-up, whose validation gradient would otherwise count) minus the RSS before the first."""
    _, _, _, fns = setup(size)
    base = rss_mib()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    fns[method]()
    fns[method]()
    hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmHWM:")) / 1024
    return {"size": size, "method": method, "peak_rss_delta_mib": hwm - base}


def plot(timing: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.2
    for i, method in enumerate(("exact", "projected", "sjlt", "reference")):
        xs = [x + (i - 1.5) * width for x, t in enumerate(timing) if method in t["ratio_best"]]
        vals = [t["ratio_best"][method] for t in timing if method in t["ratio_best"]]
        bars = ax[0].bar(xs, vals, width, label=method)
        ax[0].bar_label(bars, fmt="%.2f", fontsize=8)
    ax[0].axhline(1.0, color="k", lw=0.8)
    ax[0].axhline(1.2, color="grey", ls="--", lw=0.8, label="1.2 / 1.25 targets")
    ax[0].axhline(1.25, color="grey", ls="--", lw=0.8)
    ax[0].set_xticks(range(len(timing)), [f"{t['size']}: {t['params'] / 1e6:.1f}M params\n"
                                          f"{t['prompts']} prompts, {t['tokens']} tok" for t in timing], fontsize=8)
    ax[0].set_ylabel("best time / best floor time")
    ax[0].legend()
    ax[0].set_title("influence engine vs floor (fwd+bwd with .grad), 2 threads")
    labels, vals = [], []
    for t in timing:
        for rows, r in t["projection"]["rows"].items():
            labels.append(f"{t['size']}\nB={rows}")
            vals.append(r["flops"] / 1e9)
    ax[1].bar(range(len(vals)), vals, color="tab:orange")
    mm = timing[0]["projection"]["matmul_fp32_2048_flops"] / 1e9
    ax[1].axhline(mm, color="k", ls="--", label="fp32 matmul 2048^3")
    ax[1].axhline(mm / 2, color="grey", ls=":", label="half of it")
    ax[1].set_xticks(range(len(vals)), labels)
    ax[1].set_ylabel("GFLOP/s (2*B*D*k / time)")
    ax[1].set_title(f"projection alone, k={PROJ_DIM}, p={RATIO}, generation included")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _sub(*args) -> dict:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.influence_engine", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        raise SystemExit(f"worker {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--timing", metavar="SIZE")
    ap.add_argument("--memory", nargs=2, metavar=("SIZE", "METHOD"))
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args()
    if args.timing:
        print(json.dumps(timing_worker(args.timing)))
        return
    if args.memory:
        print(json.dumps(memory_worker(*args.memory)))
        return
    if args.plot_only:  # redraw from the saved JSON
        plot(json.loads((RESULTS / "influence_engine.json").read_text())["timing"], RESULTS / "influence_engine.png")
        return
    timing, memory = [], {}
    for size in args.sizes.split(","):
        timing.append(_sub("--timing", size))
        print(f"{size}: {json.dumps(timing[-1]['ratio_best'])}", file=sys.stderr)
        memory[size] = {m: round(_sub("--memory", size, m)["peak_rss_delta_mib"], 1) for m in timing[-1]["seconds_best"]}
    png = RESULTS / "influence_engine.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    previous = RESULTS / "influence_engine.json"
    if previous.is_file():  # sizes not run now keep their last measurement (each size is one run, side by side)
        old = json.loads(previous.read_text())
        if old.get("settings", {}).get("sjlt") == "sjlt":
            ran = {t["size"] for t in timing}
            timing = [t for t in old["timing"] if t["size"] not in ran] + timing
            memory = {**{k: v for k, v in old["peak_rss_delta_mib"].items() if k not in ran}, **memory}
    timing.sort(key=lambda t: list(SIZES).index(t["size"]))
    plot(timing, png)
    write_result("influence_engine", {
        "settings": {"sample_ratio": RATIO, "proj_dim": PROJ_DIM, "projected": "rademacher", "sjlt": "sjlt",
                     "grad_dtype": "float32", "params": "linear", "threads": 2, "head_chunk_tokens": HEAD_CHUNK},
        "ratio_to_floor_best": {t["size"]: {m: round(v, 3) for m, v in t["ratio_best"].items()} for t in timing},
        "ratio_to_floor_median_paired": {t["size"]: {m: round(v, 3) for m, v in t["ratio_median_paired"].items()}
                                         for t in timing},
        "ratio_to_floor_paired_min_max": {t["size"]: {m: [round(x, 3) for x in v] for m, v in t["ratio_paired_min_max"].items()}
                                          for t in timing if "ratio_paired_min_max" in t},
        "peak_rss_delta_mib": memory, "timing": timing, "plot": png.name})


if __name__ == "__main__":
    main()
