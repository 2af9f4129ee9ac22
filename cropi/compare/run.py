"""The comparison driver: every (seed, arm) as one `run_loop` in its own run directory.

    ROOT/compare.json                 what was asked: config, overrides, arms, seeds (every start)
    ROOT/seed-S/buffer/               the seed's offline buffer, built once, shared by its arms
    ROOT/seed-S/ARM/                  one run directory (cropi.store.paths); ARM/buffer -> ../buffer
    ROOT/report/                      cropi.compare.report

ROOT is the config's run.dir. Seeds run in order, each seed's arms in the order given, all in
one Ray session. Resume is arm by arm (an arm with run_result.json is skipped) and, inside an
arm, whatever run_loop resumes; a rerun with a changed config is refused by the arm's run record.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from cropi.compare.arms import Arm
from cropi.errors import CropiError
from cropi.store import records
from cropi.store.paths import RunPaths, compare_arm_dir, compare_seed_dir
from cropi.config import load_config
from cropi.model.hub import resolve
from cropi.loop import run_loop
from cropi.plan import preflight
from cropi.ray_utils import ray_session


seed_dir, arm_dir = compare_seed_dir, compare_arm_dir  # cropi.store.paths owns the layout


def arm_config(config_path: str, overrides: list[str], arm: Arm, seed: int, root: Path):
    return resolve(load_config(config_path, [*overrides, *arm.overrides, f"run.seed={seed}",
                                             f"run.dir={arm_dir(root, seed, arm.name)}"]))


def _share_buffer(root: Path, seed: int, arm: Arm) -> None:
    """ARM/buffer -> ../buffer: the first arm of the seed that needs it builds it, the others find it."""
    shared = seed_dir(root, seed) / "buffer"
    link = arm_dir(root, seed, arm.name) / "buffer"
    shared.mkdir(parents=True, exist_ok=True)
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        return
    if link.exists():
        raise CropiError(f"{link} exists and is not the link to the seed's shared buffer {shared}; "
                         "remove it or use another run.dir")
    os.symlink(os.path.relpath(shared, link.parent), link)


def run_compare(config_path: str, overrides: list[str], arms: list[Arm], seeds: list[int], log=print) -> Path:
    """Run every (seed, arm) not yet complete; returns ROOT."""
    from cropi.entry import check_launch

    if not seeds:
        raise CropiError("--seeds: name at least one seed")
    if len(set(seeds)) != len(seeds):
        raise CropiError(f"--seeds: a seed is repeated in {seeds}")
    base = resolve(load_config(config_path, overrides))
    root = Path(base.run.dir)
    cfgs = {(s, a.name): arm_config(config_path, overrides, a, s, root) for s in seeds for a in arms}  # all valid first
    check_launch(base, [])

    for a in arms:  # fit and placement of each arm's loop, before any arm runs
        preflight(cfgs[(seeds[0], a.name)], a.method)
    old = records.read_if(records.COMPARE_RECORD, root / "compare.json") or {}
    record = {"config": str(config_path), "overrides": list(overrides), "arms": [a.name for a in arms],
              "seeds": list(seeds), "arm_overrides": {a.name: [a.method, *a.overrides] for a in arms},
              "history": [*old.get("history", []), {"started": round(time.time(), 3), "arms": [a.name for a in arms],
                                                     "seeds": list(seeds)}]}
    record["arms"] = list(dict.fromkeys([*old.get("arms", []), *record["arms"]]))
    record["seeds"] = sorted(set(old.get("seeds", [])) | set(seeds))
    record["arm_overrides"] = {**old.get("arm_overrides", {}), **record["arm_overrides"]}
    records.write(records.COMPARE_RECORD, record, root / "compare.json")
    with ray_session(base, dashboard=True):
        for s in seeds:
            for a in arms:
                cfg = cfgs[(s, a.name)]
                done = records.read_if(records.RUN_RESULT, RunPaths.of(cfg).run_result)
                if done is not None:
                    log(f"seed {s} {a.name}: complete, skipped")
                    continue
                if a.needs_buffer:
                    _share_buffer(root, s, a)
                log(f"seed {s} {a.name}: {a.about}")
                t0 = time.time()
                run_loop(cfg, a.method, log=lambda *x: None)
                log(f"seed {s} {a.name}: done in {time.time() - t0:.0f} s")
    return root
