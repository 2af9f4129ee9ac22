"""Benchmark: the streaming selector on a synthetic pool of 200,000 prompts at k = 4096.

    .venv/bin/python benchmarks/selection_pool.py                 # full size, ~1.6 GB of fp16 shards
    .venv/bin/python benchmarks/selection_pool.py --n 20000 --shards 5   # quick look
    # the 1M-prompt load test (issue 14): projected (7.3 GiB of shards) and exact mode
    .venv/bin/python benchmarks/selection_pool.py --n 1000000 --shards 250 --skip-in-memory \
        --out benchmarks/results/selection_pool_1m.json
    .venv/bin/python benchmarks/selection_pool.py --mode exact --n 1000000 --shards 250 \
        --out benchmarks/results/selection_pool_1m_exact.json

In exact mode (`--mode exact`) a shard holds each prompt's <g, v_j> per set and ||g|| (what the
gradient actors write in exact mode), here computed from the same synthetic gradients at a small
width, and val_targets.json the targets' norms.

Writes a projected-mode influence directory to a temporary folder (50 shards of 4,000 prompts,
fp16 gradients; 8 families, 4 of which have a validation set of 200 prompts), then times, each in
a fresh child process, its peak RSS (Linux VmHWM, reset after imports and building the pool's
PromptRow list; that baseline is reported too) belonging to that run alone:

- streamed:  run_selection end to end (reads, scores, ranks, fuses, writes selection.parquet +
             summary), memory bounded by one record batch;
- read_only: the same shard batches read and decoded with nothing computed (the I/O floor);
- in_memory: every shard loaded at once (pq.read_table), then the same pure functions on the
             whole pool, scored in 4096-row slices so the float64 copy does not dominate.
The streamed and in-memory selections must be identical (same per-row arithmetic). Results go
to benchmarks/results/selection_pool.json. Files are read warm from the page cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cropi.config import SelectionConfig  # noqa: E402
from cropi.data.dataset import PromptRow  # noqa: E402
from cropi.store import influence as store  # noqa: E402
from tests.support import fake_influence as fake  # noqa: E402

FAMILIES = [f"f{i}" for i in range(8)]
VAL_FAMILIES = FAMILIES[:4]


def _family(i: int) -> str:
    return FAMILIES[i % len(FAMILIES)]


def generate(d: Path, n: int, k: int, shards: int, dtype: str, seed: int = 0) -> None:
    """Prompt i is of family i mod 8; its gradient is s_i * d_family + e_i with s_i ~ U(0, 1), so
    scores spread out and the best prompts are the most aligned ones of the validated families."""
    dirs = fake.family_directions(FAMILIES, k, seed)
    per = -(-n // shards)
    for si in range(shards):
        ids = np.arange(si * per, min(n, (si + 1) * per))
        rng = np.random.default_rng(seed + 1000 + si)
        signal = rng.random((len(ids), 1), dtype=np.float32)  # [B, 1]
        g = fake.aligned_gradients([_family(i) for i in ids], dirs, rng, signal=signal)  # [B, k] float32
        zero = rng.random(len(ids)) < 0.05  # 5% prompts with all-equal rewards
        g[zero] = 0
        fake.write_train_shard(d, si, fake.grad_table(ids, zero, g, dtype))
    rng = np.random.default_rng(seed + 1)
    for f in VAL_FAMILIES:
        fake.write_val_set(d, f, np.arange(200), np.zeros(200, bool), fake.aligned_gradients([f] * 200, dirs, rng), dtype)
    fake.write_manifest(d, "projected", VAL_FAMILIES, shards, proj_dim=k, note="synthetic benchmark pool")


def generate_exact(d: Path, n: int, shards: int, seed: int = 0, width: int = 64) -> None:
    """Exact-mode shards from the same kind of synthetic gradients (at `width` coordinates): dots
    with the validation targets and the norms, the columns the exact-mode selector reads."""
    dirs = fake.family_directions(FAMILIES, width, seed)
    rng = np.random.default_rng(seed + 1)
    targets = np.stack([fake.aligned_gradients([f] * 200, dirs, rng).mean(0) for f in VAL_FAMILIES])  # [S, w]
    per = -(-n // shards)
    for si in range(shards):
        ids = np.arange(si * per, min(n, (si + 1) * per))
        rng = np.random.default_rng(seed + 1000 + si)
        g = fake.aligned_gradients([_family(i) for i in ids], dirs, rng,
                                   signal=rng.random((len(ids), 1), dtype=np.float32)).astype(np.float64)
        zero = rng.random(len(ids)) < 0.05
        g[zero] = 0
        dots = g @ targets.T  # [B, S]
        fake.write_train_shard(d, si, store.shard_table(ids, zero, norm=np.linalg.norm(g, axis=1),
                                                        dots={s: dots[:, j] for j, s in enumerate(VAL_FAMILIES)}))
    store.write_val_targets(d, {s: {"num_prompts": 200, "num_used": 100, "norm": float(np.linalg.norm(t))}
                                for s, t in zip(VAL_FAMILIES, targets)})
    fake.write_manifest(d, "exact", VAL_FAMILIES, shards, note="synthetic benchmark pool (exact mode)")


def _prompts(n: int) -> list[PromptRow]:
    return [PromptRow(i, f"synth_{_family(i)}", [{"role": "user", "content": "x"}], "0", {"family": _family(i)})
            for i in range(n)]


def _proc_status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def _reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS. Needed
    because a child's ru_maxrss starts from its parent's RSS at fork."""
    Path("/proc/self/clear_refs").write_text("5")


def _digest(selected_ids: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(selected_ids, np.int64).tobytes()).hexdigest()[:16]


def child(mode: str, d: Path, n: int, out: Path) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cropi.selection import run_selection
    from cropi.selection.select import load_projected_targets
    from cropi.store import influence as reader
    from cropi.selection.fusion import select_from_scores
    from cropi.selection.scoring import projected_scores

    cfg = SelectionConfig()
    prompts = _prompts(n) if mode != "read_only" else None
    _reset_peak_rss()
    base = _proc_status_mb("VmRSS")  # imports + the pool's PromptRow list
    t0 = time.perf_counter()
    res: dict = {}
    if mode == "streamed":
        s = run_selection(d, prompts, cfg, 0, out)
        t = pq.read_table(out / "selection.parquet", columns=["prompt_id", "selected"])
        sel = t.column("prompt_id").to_numpy()[t.column("selected").to_numpy(zero_copy_only=False)]
        fams = s["composition"]["family"]
        res = {"selected": s["selected"], "zero_grad": s["zero_grad"], "selection_digest": _digest(sel),
               "selected_from_validated_families": sum(fams[f]["selected"] for f in VAL_FAMILIES) / s["selected"],
               "batch_rows": s["io"]["batch_rows"]}
    elif mode == "read_only":
        m = reader.read_manifest(d)
        rows = 0
        for p in m.train_paths():
            for ids, _, _payload in reader.iter_train_batches(p, m, reader.default_batch_rows(m)):
                rows += len(ids)
        res = {"rows": rows}
    elif mode == "in_memory":
        m = reader.read_manifest(d)
        targets, _ = load_projected_targets(m, cfg.max_val_grads, 0)
        table = pa.concat_tables([pq.read_table(p) for p in m.train_paths()])
        ids = table.column("prompt_id").to_numpy()
        zero = table.column("zero_grad").to_numpy(zero_copy_only=False)
        grads = table.column("grad").combine_chunks().flatten().to_numpy().reshape(len(ids), m.proj_dim)  # [N, k]
        order = np.argsort(ids)
        scores = np.empty((len(ids), len(m.sets)))
        eligible = np.empty(len(ids), bool)
        for i in range(0, len(ids), 4096):
            sl = slice(i, i + 4096)
            scores[sl], eligible[sl] = projected_scores(grads[sl], zero[sl], targets)
        out_sel = select_from_scores(scores[order], eligible[order], ids[order], cfg.alpha, cfg.fusion, cfg.k_rrf)
        res = {"selected": int(out_sel["selected"].sum()), "selection_digest": _digest(ids[order][out_sel["selected"]]),
               "arrow_bytes_mb": round(table.nbytes / 2**20, 1)}
    res["seconds"] = round(time.perf_counter() - t0, 2)
    peak = _proc_status_mb("VmHWM")
    res["baseline_rss_mb"] = round(base, 1)
    res["peak_rss_mb"] = round(peak, 1)
    res["peak_rss_above_baseline_mb"] = round(peak - base, 1)
    res["arrow_pool_peak_mb"] = round(pa.default_memory_pool().max_memory() / 2**20, 1)  # live Arrow buffers
    res["ru_maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return res


def writer_dictionary_effect(inf: Path, reps: int = 5) -> dict:
    """Read time of shard 0 as written (use_dictionary=False) vs rewritten with pyarrow's
    defaults (dictionary encoding tried first): what the gradient actors' writer choice costs."""
    import pyarrow.parquet as pq

    from cropi.store import influence as reader

    m = reader.read_manifest(inf)
    plain = m.train_paths()[0]
    default = inf.parent / "shard0-default-writer.parquet"
    pq.write_table(pq.read_table(plain), default)

    def read_s(p: Path) -> float:
        t = time.perf_counter()
        for _ in reader.iter_train_batches(p, m, reader.default_batch_rows(m)):
            pass
        return time.perf_counter() - t
    times = {"plain": [], "default": []}
    for _ in range(reps):  # interleaved, so a load spike hits both
        times["plain"].append(read_s(plain))
        times["default"].append(read_s(default))
    default.unlink()
    return {"shard0_read_s_use_dictionary_false": round(float(np.median(times["plain"])), 3),
            "shard0_read_s_pyarrow_default_writer": round(float(np.median(times["default"])), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--shards", type=int, default=50)
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    ap.add_argument("--dir", default="", help="Where to write the shards (default: a temporary folder, removed after).")
    ap.add_argument("--skip-in-memory", action="store_true")
    ap.add_argument("--mode", default="projected", choices=["projected", "exact"],
                    help="the influence store to select from (exact: dots and norms; no in-memory run)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "selection_pool.json"))
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        print(json.dumps(child(args.child, Path(args.dir), args.n, Path(args.dir).parent / "out")))
        return

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="cropi-bench-"))
    inf = work / "influence"
    try:
        t0 = time.perf_counter()
        if args.mode == "exact":
            generate_exact(inf, args.n, args.shards)
        else:
            generate(inf, args.n, args.k, args.shards, args.dtype)
        gen_s = time.perf_counter() - t0
        disk = sum(p.stat().st_size for p in inf.rglob("*.parquet"))
        print(f"generated {args.n} prompts ({args.mode}) in {args.shards} shards: {disk / 2**30:.2f} GiB, {gen_s:.0f} s",
              flush=True)
        runs = {}
        skip_mem = args.skip_in_memory or args.mode == "exact"
        for mode in ["streamed", "read_only"] + ([] if skip_mem else ["in_memory"]):
            load = os.getloadavg()[0]
            cmd = [sys.executable, __file__, "--child", mode, "--dir", str(inf), "--n", str(args.n)]
            r = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
            runs[mode] = {**json.loads(r.stdout.strip().splitlines()[-1]), "loadavg_1min_before": round(load, 2)}
            print(mode, runs[mode], flush=True)
        st = runs["streamed"]
        result = {
            "benchmark": "selection_pool", "mode": args.mode, "n_prompts": args.n,
            "proj_dim": args.k if args.mode == "projected" else None, "num_shards": args.shards,
            "grad_dtype": args.dtype, "num_sets": len(VAL_FAMILIES), "val_prompts_per_set": 200,
            "selection": {"alpha": 0.1, "fusion": "rrf", "k_rrf": 60.0, "max_val_grads": 100},
            "shard_bytes_gib": round(disk / 2**30, 3), "generate_s": round(gen_s, 1),
            "runs": runs,
            "streamed_prompts_per_s": round(args.n / st["seconds"]),
            "streamed_gib_per_s": round(disk / 2**30 / st["seconds"], 3),
            "writer": writer_dictionary_effect(inf) if args.mode == "projected" else None,
            "streamed_equals_in_memory": (runs["in_memory"]["selection_digest"] == st["selection_digest"])
            if "in_memory" in runs else None,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
                        "platform": platform.platform()},
            "notes": "each run in a fresh process; peak RSS = VmHWM reset after imports + the PromptRow pool "
                     "(baseline_rss_mb); shards read warm from the page cache",
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
