"""Weight sync trainer -> vLLM: broadcast (trainer.sync: broadcast) against the object store
(trainer.sync: object_store), side by side in one run, at the real vocabulary.

Random-init Qwen2-architecture models (vocabulary 151,936, tied embeddings) of ~10M, ~100M and
~400M parameters, float32 (the CPU dtype), one vLLM engine, trainer world 1 and 2 under ZeRO-2
and ZeRO-3. For every (size, world, stage) both paths sync the same trainer weights into the same
engine, `--repeats` times each, alternating; reported: seconds per sync (min, median, max), and
per trainer rank its resident memory before the syncs (steady state) and its peak during them
(Linux VmHWM, reset before each sync). After each path's last sync the engine's log-probs of a
fixed sequence are compared with the trainer's (HF forward of the same weights). The ranks'
reference model is the tiny one (it plays no part in a sync), to leave room for 400M x 2 ranks.
Rows of (size, world, stage) not rerun are kept from the last run's JSON; the JSON is written after
every row.
Usage: .venv/bin/python -m benchmarks.weight_sync [--sizes 10m,100m,400m] [--repeats 3] [--plot-only]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS, write_result

VOCAB = 151_936
SIZES = {  # hidden, intermediate, layers, heads, kv heads
    "10m": (64, 176, 2, 2, 1),  # head_dim 32: vLLM CPU attention has no kernel for 16
    "100m": (512, 1376, 8, 8, 2),
    "400m": (896, 4864, 18, 14, 2),
}
COMBOS = ((1, 2), (1, 3), (2, 2), (2, 3))


def build(size: str, out: Path) -> int:
    """Save a random Qwen2 of `size` with the tiny tokenizer (ids < its vocabulary) -> parameters."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    h, inter, layers, heads, kv = SIZES[size]
    tok = AutoTokenizer.from_pretrained("artifacts/base-model")
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=h, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    m = Qwen2ForCausalLM(cfg)
    m.save_pretrained(out)
    tok.save_pretrained(out)
    return sum(p.numel() for p in m.parameters())


def _mem(self_) -> dict:
    """On an actor: (VmRSS, VmHWM) in MiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def _reset_peak(self_) -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def _perturb(self_) -> None:
    """On a trainer rank: add a seeded small offset to every parameter (every rank the same), so a
    sync really carries new values."""
    import contextlib

    import torch

    module = self_.engine.module
    gathered = contextlib.nullcontext()
    if self_.cfg.trainer.zero_stage == 3:
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=0)
    g = torch.Generator().manual_seed(7)
    with gathered, torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)


def _trainer_logprobs(self_, seq: list[int]) -> list[float]:
    import contextlib

    import torch

    from cropi.model.sequences import collate, token_logprobs

    module = self_.engine.module
    gathered = contextlib.nullcontext()
    if self_.cfg.trainer.zero_stage == 3:
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
    ids, attn, _ = collate([seq[:1]], [seq[1:]], 0)
    with gathered, torch.no_grad():
        return token_logprobs(module.eval(), ids, attn)[0, 1:].tolist()


def measure(size: str, model: str, engines, world: int, zero: int, repeats: int) -> dict:
    import ray

    from cropi.config import load_config
    from cropi.sync.link import WeightLink
    from cropi.trainer.group import TrainerGroup

    sets = [f"model.path={model}", f"trainer.world_size={world}", f"trainer.zero_stage={zero}",
            "trainer.sync_bucket_mb=256", "resources.rollout.max_restarts=0"]
    cfg = load_config("configs/tiny-cpu.yaml", sets + ["trainer.sync=broadcast"])
    cfg_os = load_config("configs/tiny-cpu.yaml", sets + ["trainer.sync=object_store"])
    seq = list(range(3, 35))
    row = {"size": size, "world": world, "zero_stage": zero}
    # the reference model plays no part in a sync: the tiny one stands in, to leave room at 400M
    tiny_ref = str(Path("artifacts/base-model").resolve())
    with TrainerGroup(cfg, model, tiny_ref, tag=f"{size}-w{world}z{zero}") as group:
        ray.get([r.__ray_call__.remote(_perturb) for r in group.ranks])
        links = {"broadcast": WeightLink(cfg, group, engines), "object_store": WeightLink(cfg_os, group, engines)}
        steady = ray.get([r.__ray_call__.remote(_mem) for r in group.ranks])
        times = {k: [] for k in links}
        parts = {k: [] for k in links}
        peak = {k: [0.0] * world for k in links}  # the most any sync raised a rank above its RSS just before it
        for name, link in links.items():  # every broadcast first: an object-store sync may not fit at 400M
            try:
                for rep in range(repeats):
                    ray.get([r.__ray_call__.remote(_reset_peak) for r in group.ranks])
                    before = ray.get([r.__ray_call__.remote(_mem) for r in group.ranks])
                    t0 = time.perf_counter()
                    parts[name].append(link.push())
                    times[name].append(time.perf_counter() - t0)
                    hwm = ray.get([r.__ray_call__.remote(_mem) for r in group.ranks])
                    peak[name] = [max(a, h["VmHWM"] - b["VmRSS"]) for a, h, b in zip(peak[name], hwm, before)]
                eng = ray.get(engines.actors[0].prompt_logprobs.remote([seq]))[0]
                ref = ray.get([r.__ray_call__.remote(_trainer_logprobs, seq) for r in group.ranks])[0] \
                    if zero == 3 else ray.get(group.ranks[0].__ray_call__.remote(_trainer_logprobs, seq))
                row[f"{name}_max_logprob_diff"] = max(abs(a - b) for a, b in zip(eng, ref))
            except Exception as e:  # noqa: BLE001 -- recorded in the row: what failed and why
                row[f"{name}_error"] = str(e).splitlines()[0][:300]
                print(f"{size} world {world} zero {zero}: {name} failed: {row[name + '_error']}", flush=True)
    for name in links:
        t = times[name]
        if not t:
            continue
        row[name] = {"seconds_min": min(t), "seconds_median": statistics.median(t), "seconds_max": max(t),
                     "rank_steady_rss_mib": [round(s["VmRSS"]) for s in steady],
                     "rank_peak_over_steady_mib": [round(p) for p in peak[name]]}
        if name == "broadcast":  # rank 0's breakdown: waiting for the engines, streaming, their last load
            for k in ("ready_seconds", "send_seconds", "load_seconds", "engine_seconds_max", "engine_receive_seconds_max"):
                row[name][k + "_median"] = statistics.median(p[k] for p in parts[name])
    if "object_store" not in row or "broadcast" not in row:
        return row
    row["speedup_median"] = row["object_store"]["seconds_median"] / row["broadcast"]["seconds_median"]
    row["speedup_min"] = row["object_store"]["seconds_min"] / row["broadcast"]["seconds_min"]
    print(f"{size} world {world} zero {zero}: broadcast {row['broadcast']['seconds_median']:.2f} s, object store "
          f"{row['object_store']['seconds_median']:.2f} s (x{row['speedup_median']:.2f}); rank peaks over steady "
          f"{row['broadcast']['rank_peak_over_steady_mib']} vs {row['object_store']['rank_peak_over_steady_mib']} MiB",
          flush=True)
    return row


def plot(path: Path) -> None:
    """Seconds per sync against parameters, both paths, one panel per (world, stage)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = json.loads((RESULTS / "weight_sync.json").read_text())["rows"]
    fig, axes = plt.subplots(1, len(COMBOS), figsize=(4 * len(COMBOS), 3.4), sharey=True)
    for ax, (world, zero) in zip(axes, COMBOS):
        sub = [r for r in rows if (r["world"], r["zero_stage"]) == (world, zero)]
        for name, color in (("broadcast", "tab:blue"), ("object_store", "tab:red")):
            pts = [(r["parameters"] / 1e6, r[name]) for r in sub if name in r]
            if not pts:
                continue
            x = [p for p, _ in pts]
            ax.plot(x, [m["seconds_median"] for _, m in pts], "o-", color=color, label=name)
            ax.fill_between(x, [m["seconds_min"] for _, m in pts], [m["seconds_max"] for _, m in pts], color=color, alpha=0.2)
        for r in sub:
            if "object_store_error" in r:
                ax.annotate("object store:\nout of memory", (r["parameters"] / 1e6, ax.get_ylim()[1] * 0.8), fontsize=7,
                            color="tab:red", ha="right")
        ax.set_xscale("log")
        ax.set_title(f"world {world}, ZeRO-{zero}")
        ax.set_xlabel("parameters (M), vocab 151,936")
    axes[0].set_ylabel("seconds per sync (median, min-max)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    import ray

    from cropi.config import load_config
    from cropi.rollout.engine_actor import engine_pool

    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10m,100m,400m")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--combos", default=",".join(f"{w}x{z}" for w, z in COMBOS), help="worldxstage, e.g. 1x2,2x3")
    args = ap.parse_args()
    if args.plot_only:
        return plot(RESULTS / "weight_sync.png")
    combos = [tuple(int(x) for x in c.split("x")) for c in args.combos.split(",")]
    rows, params = [], {}
    ray.init(num_cpus=4, include_dashboard=False, configure_logging=False)
    try:
        for size in args.sizes.split(","):
            # on disk, not /dev/shm: tmpfs pages are RAM, and 400M x 2 ranks leaves none to spare
            with tempfile.TemporaryDirectory(prefix=f"cropi-sync-{size}-", dir="/var/tmp") as d:
                params[size] = build(size, Path(d))
                cfg = load_config("configs/tiny-cpu.yaml", [f"model.path={d}", "resources.rollout.kv_cache_gib=1",
                                                            "rollout.max_model_len=256", "resources.rollout.max_restarts=0"])
                engines = None
                try:
                    for world, zero in combos:
                        if engines is None:  # (again, after a path killed the engine)
                            engines = engine_pool(cfg, d, f"bench-{size}-{world}x{zero}")
                        row = measure(size, d, engines, world, zero, args.repeats)
                        rows.append({"parameters": params[size], **row})
                        _write(rows, params, args.repeats)  # after every row: a later failure loses nothing
                        if any(k.endswith("_error") for k in row):
                            engines.close()
                            engines = None
                finally:
                    if engines is not None:
                        engines.close()
    finally:
        ray.shutdown()


def _write(rows: list[dict], params: dict, repeats: int) -> None:
    old = RESULTS / "weight_sync.json"  # rows of sizes or combos not rerun now are kept
    done = {(r["size"], r["world"], r["zero_stage"]) for r in rows}
    if old.is_file():
        prev = json.loads(old.read_text())
        rows = [r for r in prev.get("rows", []) if (r["size"], r["world"], r["zero_stage"]) not in done] + rows
        params = {**prev.get("parameters", {}), **params}
    rows = sorted(rows, key=lambda r: (list(SIZES).index(r["size"]), r["world"], r["zero_stage"]))
    write_result("weight_sync", {"vocab": VOCAB, "dtype": "float32", "engines": 1, "bucket_mb": 256,
                                 "repeats": repeats, "parameters": params, "rows": rows})
    plot(RESULTS / "weight_sync.png")


if __name__ == "__main__":
    main()
