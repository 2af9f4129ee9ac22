"""`Selector`: the Ray actor around `run_selection` (a thin shell), and the phase-level call."""

from __future__ import annotations

import ray

from cropi import seeds
from cropi.data.dataset import PromptRow
from cropi.store import records
from cropi.store.paths import RunPaths
from cropi.selection.select import run_selection
from cropi.placement import placement_wait
from cropi.pool import WorkerPool


def select_phase(cfg, phase: int, pool: list[PromptRow]) -> dict:
    """Select phase M's subset from RUN_DIR/phase-M/influence; writes selection.parquet,
    selection_summary.json and selection.png (composition across phases so far)."""
    from cropi.selection.plot import plot_selection

    paths = RunPaths.of(cfg)
    prev = paths.selection(phase - 1) if phase > 0 else None
    summary = run_selection(paths.influence(phase), pool, cfg.selection, seeds.val_targets(cfg.run.seed),
                            paths.phase(phase), prev if prev is not None and prev.is_file() else None)
    summaries = [records.read(records.SELECTION_SUMMARY, paths.selection_summary(m)) for m in range(phase + 1)
                 if paths.selection_summary(m).is_file()]
    plot_selection(paths.selection(phase), summaries, paths.selection_plot(phase))
    return summary


@ray.remote
class Selector:
    def select(self, cfg, phase: int, pool: list[PromptRow]) -> dict:
        return select_phase(cfg, phase, pool)


def run_selector(cfg, phase: int, pool: list[PromptRow]) -> dict:
    # selecting is a pure function of the influence files and writes its outputs atomically (the
    # summary last), so a selector that dies is restarted by Ray and its call retried
    r = cfg.resources.influence.max_restarts
    with WorkerPool(Selector, lambda i: (), count=1, cpus=1.0, gpus=0.0, what=f"phase {phase} selection",
                    name=f"cropi-selector-{phase}", options={"max_restarts": r, "max_task_retries": r},
                    wait=placement_wait(cfg), fields="the other stages' resources (the selector needs 1 CPU)") as selector:
        return selector.each(lambda a: a.select.remote(cfg, phase, pool))[0]


__all__ = ["Selector", "run_selector", "select_phase"]
