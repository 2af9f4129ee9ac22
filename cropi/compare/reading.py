"""Reading a comparison back: every finished (seed, arm) run directory `cropi compare` wrote
(cropi.compare.run) as an `ArmRun` -- its evaluations with the wall time at each, its selection
overhead, selections, drift and step metrics -- plus the seed's pool labels and buffer statistics.
What is measured and how the wall time is charged: cropi.compare.report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cropi.errors import CropiError
from cropi.selection.baselines import NEEDS_BUFFER
from cropi.store import influence as store_influence, records
from cropi.store.paths import RunPaths, compare_seed_dir
from cropi.config import from_dict
from cropi.store.selection import selected_ids
from cropi.data.suite import load_data
from cropi.store.buffer import prompt_reward_stats

_OVERHEAD = ("refresh", "influence", "rebuffer", "influence_after_rebuffer", "select")


@dataclass
class ArmRun:
    """One (seed, arm) run, read back."""
    arm: str
    seed: int
    method: str
    steps_per_phase: int
    num_phases: int
    targeted: list[str]
    sets: list[str]
    evals: list[dict] = field(default_factory=list)  # {"step", "wall", "sets": {name: (ids, rates)}}
    train_wall: float = 0.0
    eval_wall: float = 0.0
    buffer_wall: float = 0.0
    selection_wall: float = 0.0
    kl_drift: list[dict] = field(default_factory=list)  # per phase {"phase", "kl", "kl_before_rebuffer"}
    rebuffers: list[dict] = field(default_factory=list)
    selections: list[list[int]] = field(default_factory=list)
    step_metrics: list[dict] = field(default_factory=list)
    prompts_per_step: int = 0

    def curve(self, names: list[str]) -> tuple[list[float], list[float], list[float]]:
        """(steps, wall seconds, mean pass@1 over `names`) at every evaluation."""
        ys = [float(np.mean([e["sets"][n][1].mean() for n in names])) for e in self.evals]
        return [e["step"] for e in self.evals], [e["wall"] for e in self.evals], ys


def _float_rates(details: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for name, d in details.items():
        ids = np.asarray(d["prompt_ids"], dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        out[name] = (ids[order], np.asarray(d["pass_rate"], dtype=np.float64)[order])
    return out


def read_arm(run_dir: Path, arm: str, seed: int, buffer_wall: float) -> ArmRun | None:
    """The arm's measurements; None when the run has not finished (no run_result.json)."""

    result = records.read_if(records.RUN_RESULT, RunPaths(run_dir).run_result)
    if result is None:
        return None
    rec = records.read(records.RUN_RECORD, run_dir / "run.json")
    cfg = from_dict(rec["config"])
    paths = RunPaths(run_dir)
    E, P = cfg.trainer.steps_per_phase, cfg.run.num_phases
    sets = list(cfg.data.families) if cfg.data.synthetic else list(cfg.data.val_paths)
    needs_buffer = result["method"] in ("cropi", *NEEDS_BUFFER)
    r = ArmRun(arm=arm, seed=seed, method=result["method"], steps_per_phase=E, num_phases=P,
               targeted=list(cfg.data.targeted) or sets, sets=sets,
               buffer_wall=buffer_wall if needs_buffer else 0.0, prompts_per_step=cfg.trainer.prompts_per_step)
    stage = result.get("stage_seconds", {})
    elapsed = r.buffer_wall
    for m in range(P):
        overhead = sum(stage.get(f"phase{m}/{s}", 0.0) for s in _OVERHEAD)
        r.selection_wall += overhead
        elapsed += overhead
        metrics = records.rows(records.TRAIN_METRICS_ROW, paths.train_metrics(m))
        if not metrics or metrics[0]["step"] != 0:
            raise CropiError(f"{paths.train_metrics(m)}: no step-0 line; the phase did not run to the end")
        by_step = {x["step"]: x for x in metrics}
        t0, spent_eval = metrics[0]["wall_time"], 0.0
        wall_at = {0: elapsed}
        for x in metrics[1:]:
            spent_eval += x.get("eval_seconds", 0.0)
            wall_at[x["step"]] = elapsed + (x["wall_time"] - t0) - spent_eval
        r.eval_wall += spent_eval
        r.step_metrics += metrics[1:]
        for e in records.rows(records.EVAL_ROW, paths.eval_details(m)):
            if "copied_from" in e or (m > 0 and e["step"] == 0):
                continue
            if e["step"] not in by_step:
                continue
            r.evals.append({"step": m * E + e["step"], "wall": wall_at[e["step"]], "sets": _float_rates(e["sets"])})
        elapsed = wall_at[max(wall_at)]
        r.selections.append(_selected(paths.selection(m)))
        imf = records.read_if(records.INFLUENCE_MANIFEST, store_influence.manifest_path(paths.influence(m)))
        if imf is not None:
            before = records.read_if(records.INFLUENCE_MANIFEST,
                                     store_influence.manifest_path(paths.influence_before_rebuffer(m)))
            r.kl_drift.append({"phase": m, "kl": imf["kl_drift"],
                               "kl_before_rebuffer": before["kl_drift"] if before else None})
        rb = records.read_if(records.REBUFFER_MANIFEST, paths.rebuffer_manifest(m))
        if rb is not None:
            r.rebuffers.append({"phase": m, **{k: v for k, v in rb.items() if k != "shards"}})
    r.train_wall = elapsed - r.buffer_wall - r.selection_wall
    if not r.evals:
        raise CropiError(f"{run_dir}: no evaluations in eval.jsonl (written by runs before issue 13?)")
    return r


def _selected(path: Path) -> list[int]:
    return selected_ids(path) if path.is_file() else []


def _buffer_wall(seed_root: Path) -> float:
    """What building the seed's shared buffer cost: the largest buffer stage of its arms (the
    builder's; the others found it complete)."""
    best = 0.0
    for rr in seed_root.glob("*/run_result.json"):
        best = max(best, records.read(records.RUN_RESULT, rr)["stage_seconds"].get("buffer", 0.0))
    return best


def _pool_families(run: ArmRun, run_dir: Path) -> tuple[dict[int, str], dict[int, str], dict[int, str]]:
    """Prompt id -> data_source, -> label (clean | wrong | conflict) and -> family of the arm's pool."""

    cfg = from_dict(records.read(records.RUN_RECORD, run_dir / "run.json")["config"])
    pool, _ = load_data(cfg)
    return ({r.prompt_id: r.data_source for r in pool},
            {r.prompt_id: str(r.extra_info.get("label", "clean")) for r in pool},
            {r.prompt_id: r.family for r in pool})


def _buffer_stats(seed_root: Path) -> dict[int, tuple[float, float]] | None:
    b = seed_root / "buffer"
    return prompt_reward_stats(b) if (b / "manifest.json").is_file() else None


def load_runs(root: Path) -> tuple[dict, dict[str, dict[int, ArmRun]], dict, dict]:
    """ROOT's record and every finished (seed, arm), read once: (compare.json, arm -> seed -> run,
    (seed, arm) -> pool families, seed -> buffer statistics)."""
    root = Path(root)
    rec = records.read_if(records.COMPARE_RECORD, root / "compare.json")
    if rec is None:
        raise CropiError(f"{root} has no compare.json: not a `cropi compare` run directory")
    runs: dict[str, dict[int, ArmRun]] = {}
    families: dict[tuple[int, str], dict[int, str]] = {}
    labels: dict[tuple[int, str], dict[int, str]] = {}
    kinds: dict[tuple[int, str], dict[int, str]] = {}
    buffers: dict[int, dict | None] = {}
    for seed in rec["seeds"]:
        sroot = compare_seed_dir(root, seed)
        bw = _buffer_wall(sroot)
        buffers[seed] = _buffer_stats(sroot)
        for arm in rec["arms"]:
            d = sroot / arm
            r = read_arm(d, arm, seed, bw) if d.is_dir() else None
            if r is not None:
                runs.setdefault(arm, {})[seed] = r
                try:
                    families[(seed, arm)], labels[(seed, arm)], kinds[(seed, arm)] = _pool_families(r, d)
                except CropiError:
                    pass
    if not runs:
        raise CropiError(f"{root}: no arm has finished (no run_result.json under seed-*/ARM)")
    return rec, runs, families, buffers, {"label": labels, "family": kinds}
