"""Projection cost against k and the sampled dimension, per kind, and what it means at the paper's sizes.

What one influence pass pays for its projection (cropi.influence.projection), measured alone on
x [B, D] random float32 rows handed over in pieces of PIECE columns (one layer's sampled gradient
at a time, as the engine hands them), B = 16 prompts (the 25m batch of
benchmarks/influence_engine.py), torch.set_num_threads(2):
  - k sweep: k = 1024 ... 32768 at D = 2^18 (16 blocks of R), every kind;
  - D sweep: D = 2^16 ... 2^22 at k = 1024, every kind (2^22 is past the 25m model's 2.54M).
Dense kinds regenerate R block by block in every pass: their time is (D * k) * (generation +
int8 GEMM of 4B digit rows), linear in both. sjlt is s = 4 scatter-adds per (row, coordinate),
linear in D * B; its folded hash is drawn once per process and cached (SJLT_CACHE_MB), so the
first pass of a phase also pays the draw: both `warm` (passes 2...) and `cold` are reported.
Each point: best of REPEATS after one untimed call.

Ratio to the floor: the 25m floor (benchmarks.influence_engine: forward + backward of the same
objective with ordinary .grad, 16 prompts x 8) is measured in the same process; a point's
projection time is scaled to the 25m model's sampled dimension by its measured linearity in D
and divided by it. That is what the projection adds to the engine's ratio at 25m.

Paper sizes: per-element rates fitted at the largest measured D (dense: seconds / (D * k);
sjlt: seconds / (D * B)) give one pass's projection at Qwen2.5-1.5B and 7B shapes (p = 0.1 of
the linear weights, k = 32768, one prompt of 8 x 2048 tokens per pass, as at the shipped
configs' token budget), next to that pass's floor at this machine's measured FLOP rate (6 x
params x tokens / the 25m floor's effective FLOP/s). Those are CPU figures: the ratio is what
carries to a GPU to first order (both sides scale with the device), not the seconds;
`cropi plan` models the GPU seconds.
Usage: .venv/bin/python -m benchmarks.projection_sweep   (writes results/projection_sweep.{json,png})
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import RESULTS, write_result

KINDS = ("rademacher", "gaussian", "sjlt")
K_SWEEP = (1024, 2048, 4096, 8192, 16384, 32768)
D_SWEEP = (1 << 16, 1 << 18, 1 << 20, 1 << 22)
D_FOR_K = 1 << 18
ROWS, PIECE, REPEATS, SEED = 16, 65536, 3, 0
PAPER_K, PAPER_RATIO, PAPER_TOKENS = 32768, 0.1, 8 * 2048
PAPER_MODELS = {  # Qwen2.5 shapes (their config.json), built on the meta device for counts only
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}


def project_pass(x: torch.Tensor, k: int, kind: str) -> torch.Tensor:
    from cropi.influence.projection import make_projector

    proj = make_projector(x.shape[0], x.shape[1], k, kind, SEED)
    for start in range(0, x.shape[1], PIECE):
        proj.add(x[:, start:start + PIECE], start)
    return proj.result()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def point(kind: str, k: int, dim: int) -> dict:
    from cropi.influence import projection

    x = torch.randn(ROWS, dim, generator=torch.Generator().manual_seed(1))
    projection.clear_sjlt_cache()  # the first pass of a phase draws every hash
    cold = timed(lambda: project_pass(x, k, kind))
    warm = min(timed(lambda: project_pass(x, k, kind)) for _ in range(REPEATS))
    return {"kind": kind, "k": k, "dim": dim, "rows": ROWS, "cold_s": cold, "warm_s": warm}


def floor_25m() -> dict:
    from benchmarks import influence_engine
    from cropi.influence.coords import total_dim

    model, batch, coords, fns = influence_engine.setup("25m")
    fns["floor"]()
    seconds = min(timed(fns["floor"]) for _ in range(REPEATS))
    params = sum(p.numel() for p in model.parameters())
    tokens = int(batch.attention_mask.sum())
    return {"seconds": seconds, "params": params, "tokens": tokens, "sampled_dim": total_dim(coords),
            "flops_per_s": 6 * params * tokens / seconds}


def linear_dim(name: str) -> tuple[int, int]:
    """(all params, sampled dimension at PAPER_RATIO of the linear weights) of a paper model."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from cropi.influence.params import chosen_linears

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(Qwen2Config(**PAPER_MODELS[name]))
    seen = {id(p): p.numel() for p in model.parameters()}
    linear = sum(m.weight.numel() for m in chosen_linears(model, "linear").values())
    return sum(seen.values()), int(linear * PAPER_RATIO)


def paper_estimate(points: list[dict], floor: dict) -> dict:
    top = max(D_SWEEP)
    rates = {}
    for kind in KINDS:
        p = next(q for q in points if q["kind"] == kind and q["dim"] == top and q["k"] == 1024)
        rates[kind] = p["warm_s"] / (top * (p["k"] if kind != "sjlt" else ROWS))
    k_top = next(q for q in points if q["kind"] == "sjlt" and q["dim"] == D_FOR_K and q["k"] == PAPER_K)
    k_low = next(q for q in points if q["kind"] == "sjlt" and q["dim"] == D_FOR_K and q["k"] == 1024)
    sjlt_k_factor = k_top["warm_s"] / k_low["warm_s"]  # sjlt's scatter slows with k on a CPU (cache misses)
    out = {"rates": {"dense_s_per_dim_k": {k: rates[k] for k in ("rademacher", "gaussian")},
                     "sjlt_s_per_dim_row_k1024": rates["sjlt"], "sjlt_k32768_over_k1024": sjlt_k_factor},
           "models": {}}
    for name in PAPER_MODELS:
        params, dim = linear_dim(name)
        floor_s = 6 * params * PAPER_TOKENS / floor["flops_per_s"]
        proj = {kind: dim * PAPER_K * rates[kind] for kind in ("rademacher", "gaussian")}
        proj["sjlt"] = dim * 1 * rates["sjlt"] * sjlt_k_factor  # one prompt per pass
        out["models"][name] = {"params": params, "sampled_dim": dim, "k": PAPER_K, "prompts_per_pass": 1,
                               "tokens_per_pass": PAPER_TOKENS, "floor_s_per_pass_here": floor_s,
                               "projection_s_per_pass_here": proj,
                               "projection_over_floor": {k: v / floor_s for k, v in proj.items()}}
    return out


def plot(result: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts, floor = result["points"], result["floor_25m"]
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.4))
    for kind in KINDS:
        ks = [p for p in pts if p["kind"] == kind and p["dim"] == D_FOR_K]
        ax[0].plot([p["k"] for p in ks], [p["warm_s"] * floor["sampled_dim"] / D_FOR_K / floor["seconds"] for p in ks],
                   "o-", label=kind)
        ds = [p for p in pts if p["kind"] == kind and p["k"] == 1024]
        ax[1].plot([p["dim"] for p in ds], [p["warm_s"] for p in ds], "o-", label=f"{kind} warm")
        if kind == "sjlt":
            ax[1].plot([p["dim"] for p in ds], [p["cold_s"] for p in ds], "x--", label="sjlt cold (first pass)")
    ax[0].axhline(0.15, color="grey", ls="--", lw=0.8, label="0.15 (1.15x target less 1.0)")
    for a in ax[:2]:
        a.set_xscale("log", base=2)
        a.set_yscale("log")
        a.legend(fontsize=8)
    ax[0].set_xlabel("k")
    ax[0].set_ylabel("projection / 25m floor (scaled to D = %.2fM)" % (floor["sampled_dim"] / 1e6))
    ax[0].set_title(f"k sweep, B={ROWS} rows")
    ax[1].set_xlabel("sampled dimension D")
    ax[1].set_ylabel("seconds per pass")
    ax[1].set_title(f"D sweep, k=1024, B={ROWS}")
    models = result["paper"]["models"]
    width = 0.25
    for i, kind in enumerate(KINDS):
        vals = [m["projection_over_floor"][kind] for m in models.values()]
        bars = ax[2].bar([x + (i - 1) * width for x in range(len(models))], vals, width, label=kind)
        ax[2].bar_label(bars, fmt="%.3g", fontsize=8)
    ax[2].set_yscale("log")
    ax[2].set_xticks(range(len(models)), [f"{n}\nD={m['sampled_dim'] / 1e6:.0f}M, k={m['k']}" for n, m in models.items()],
                     fontsize=8)
    ax[2].set_ylabel("projection / floor, one pass (estimate)")
    ax[2].set_title("paper sizes, from the measured rates")
    ax[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args()
    png = RESULTS / "projection_sweep.png"
    if args.plot_only:
        import json
        plot(json.loads((RESULTS / "projection_sweep.json").read_text()), png)
        return
    torch.set_num_threads(2)
    floor = floor_25m()
    points = []
    for kind in KINDS:
        for k in K_SWEEP:
            points.append(point(kind, k, D_FOR_K))
        for dim in D_SWEEP:
            if dim != D_FOR_K:
                points.append(point(kind, 1024, dim))
    result = {"settings": {"rows": ROWS, "piece_columns": PIECE, "repeats": REPEATS, "threads": 2,
                           "k_sweep_dim": D_FOR_K},
              "floor_25m": floor, "points": points}
    result["paper"] = paper_estimate(points, floor)
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(result, png)
    write_result("projection_sweep", {**result, "plot": png.name})


if __name__ == "__main__":
    main()
