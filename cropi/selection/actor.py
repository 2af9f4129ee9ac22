"""`Selector`: the Ray actor around `run_selection` (a thin shell), and the phase-level call."""

from __future__ import annotations

import json


import ray

from cropi.config import Config
from cropi.data.dataset import PromptRow
from cropi.ray_utils import get


def select_phase(cfg: Config, phase: int, pool: list[PromptRow]) -> dict:
    """Select phase M's subset from RUN_DIR/phase-M/influence; writes selection.parquet,
    selection_summary.json and selection.png (composition across phases so far)."""
    from cropi.layout import phase_dir
    from cropi.selection.plot import plot_selection
    from cropi.selection.select import run_selection

    pdir = phase_dir(cfg, phase)
    prev = phase_dir(cfg, phase - 1) / "selection.parquet" if phase > 0 else None
    summary = run_selection(pdir / "influence", pool, cfg.selection, cfg.run.seed + phase, pdir,
                            prev if prev is not None and prev.is_file() else None)
    summaries = [json.loads((phase_dir(cfg, m) / "selection_summary.json").read_text())
                 for m in range(phase + 1) if (phase_dir(cfg, m) / "selection_summary.json").is_file()]
    plot_selection(pdir / "selection.parquet", summaries, pdir / "selection.png")
    return summary


@ray.remote
class Selector:
    def select(self, cfg: Config, phase: int, pool: list[PromptRow]) -> dict:
        return select_phase(cfg, phase, pool)


def run_selector(cfg: Config, phase: int, pool: list[PromptRow]) -> dict:
    actor = Selector.options(name=f"cropi-selector-{phase}", num_cpus=min(1.0, cfg.resources.local_num_cpus)).remote()
    try:
        return get(actor.select.remote(cfg, phase, pool))
    finally:
        ray.kill(actor)


__all__ = ["Selector", "run_selector", "select_phase"]
