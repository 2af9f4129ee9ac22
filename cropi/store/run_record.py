"""What a run was computed with: `run.json` (every start, kept) and `phase-M/phase.json`.

A phase records, when it starts, the method and every config field declared to feed its
artifacts (`feeds=` in cropi.config; never `resources.*`, `run.dir` or `run.num_phases`). A later start of the same
run compares its config with that record for every phase that has begun: a difference is
refused with the fields named, since the influence, selection, trainer state or checkpoint
already on disk came from the old values. A phase that has not begun simply records the config
it starts with, so a field may change between phases (phase.json says which values each used).
"""

from __future__ import annotations

import time
from pathlib import Path

from cropi.errors import ConfigError, CropiError
from cropi.store import records
from cropi.store.paths import RunPaths
from cropi.config import PHASE_ARTIFACTS, from_dict

KEY_VERSION = 2  # phase records without it listed every field but resources, the model by path

def phase_inputs(cfg) -> dict:
    """{'section.field': value} of every field declared to feed a phase's artifacts (buffer,
    influence, selection, training; cropi.config.PHASE_ARTIFACTS), the model by content."""

    return cfg.artifact_inputs(*PHASE_ARTIFACTS)


def check_run(cfg, method: str) -> None:
    """Before anything runs: refuse a run directory of another method, or a config that changes
    what a begun phase was computed with."""
    paths = RunPaths.of(cfg)
    old = records.read_if(records.RUN_RECORD, paths.run_json) or {}
    if old and old.get("method") != method:
        raise CropiError(f"{paths.root} holds a {old.get('method')!r} run; use another run.dir for {method!r}")
    for m in range(cfg.run.num_phases):
        check_phase(cfg, m, method)


def record_start(cfg, method: str) -> dict:
    """Append this start to run.json's history (the config of every start is kept)."""
    paths = RunPaths.of(cfg)
    old = records.read_if(records.RUN_RECORD, paths.run_json) or {}
    history = old.get("history") or ([{"config": old["config"]}] if "config" in old else [])
    history.append({"started": round(time.time(), 3), "config": cfg.to_dict()})
    record = {"method": method, "config": cfg.to_dict(), "history": history}
    records.write(records.RUN_RECORD, record, paths.run_json)
    return record


def _diff(old: dict, new: dict) -> list[str]:
    names = sorted(set(old) | set(new))
    return [f"{n}: {old.get(n, '<absent>')!r} -> {new.get(n, '<absent>')!r}" for n in names
            if old.get(n, "<absent>") != new.get(n, "<absent>")]


def _legacy_inputs(paths: RunPaths) -> dict | None:
    """A run written before phase.json existed: the config recorded in run.json."""

    raw = records.read_if(records.RUN_RECORD, paths.run_json)
    if not raw or "config" not in raw:
        return None
    try:
        old = from_dict(raw["config"], str(paths.run_json))
    except ConfigError:
        return None
    return {**phase_inputs(old), "model.path": old.model.path}  # compared as v1 records are: by path


def check_phase(cfg, phase: int, method: str) -> dict:
    """Refuse this config if phase M has begun with another; returns the record it would write."""
    paths = RunPaths.of(cfg)
    path = paths.phase_record(phase)
    want = {"phase": phase, "method": method, "key_version": KEY_VERSION, "inputs": phase_inputs(cfg)}
    pdir = paths.phase(phase)
    if not (pdir.is_dir() and any(p.name != path.name for p in pdir.iterdir())):
        return want  # not begun: it will record whatever config it starts with
    if path.is_file():
        have = records.read(records.PHASE_RECORD, path)
        old = {"method": have.get("method"), **have.get("inputs", {})}
        versioned = "key_version" in have
    else:
        legacy = _legacy_inputs(paths)
        old = None if legacy is None else {"method": method, **legacy}
        versioned = False
    new = {"method": method, **want["inputs"]}
    if old is not None and not versioned:  # written before feeds= existed: every field but resources, model by path
        new = {**{k: v for k, v in new.items() if k in old}, "model.path": cfg.model.path}
        old = {k: v for k, v in old.items() if k in new}
    changed = [] if old is None else _diff(old, new)
    if changed:
        raise CropiError(
            f"phase {phase} in {pdir} was computed with another config; changed: " + "; ".join(changed[:8])
            + (f" (and {len(changed) - 8} more)" if len(changed) > 8 else "")
            + f". Restore those fields, use another run.dir, or delete {pdir} and the phases after it to recompute.")
    return want


def claim_phase(cfg, phase: int, method: str) -> dict:
    """check_phase, then record the config phase M runs with in phase-M/phase.json."""
    want = check_phase(cfg, phase, method)
    records.write(records.PHASE_RECORD, want, RunPaths.of(cfg).phase_record(phase))
    return want


def phase_record(run_dir: str | Path, phase: int) -> dict | None:
    return records.read_if(records.PHASE_RECORD, RunPaths(run_dir).phase_record(phase))
