"""The Grafana board queries only what cropi exports, with the labels each gauge has; the gauges
keep their last values exported for the whole run (the real exporter is checked end to end in
test_loop.py::test_ray_job_submit_to_local_head)."""

import json
import re
import time
from pathlib import Path

import pytest

from cropi.monitor import GAUGES, RunMetrics

BOARD = Path(__file__).resolve().parents[1] / "cluster" / "grafana" / "cropi.json"


def board_queries():
    board = json.loads(BOARD.read_text())
    out = [(p["title"], t["expr"], t.get("legendFormat", "")) for p in board["panels"] for t in p["targets"]]
    out += [("variable " + v["name"], v["definition"], "") for v in board["templating"]["list"] if "definition" in v]
    return board, out


def test_every_panel_queries_an_exported_gauge_with_its_own_labels():
    board, queries = board_queries()
    used = set()
    for title, expr, legend in queries:
        names = re.findall(r"\bray_(cropi_\w+)", expr)
        assert names, f"panel {title!r} queries no ray_cropi_* metric: {expr}"
        for n in names:
            assert n in GAUGES, f"panel {title!r} queries ray_{n}, which cropi/monitor.py does not export"
            used.add(n)
            labels = {"run", *GAUGES[n][1]}
            grouped = {x.strip() for g in re.findall(r"by \(([^)]*)\)", expr) for x in g.split(",")}
            grouped |= set(re.findall(r"\{\{(\w+)\}\}", legend))
            grouped |= set(re.findall(r"(\w+)=~?\"", expr))
            grouped |= set(re.findall(r"label_values\(\w+, (\w+)\)", expr))
            assert grouped <= labels, f"panel {title!r}: labels {grouped - labels} are not on ray_{n} ({labels})"
    assert used == set(GAUGES), f"gauges without a panel: {set(GAUGES) - used}"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert all({"x", "y", "w", "h"} <= set(p["gridPos"]) for p in board["panels"])
    assert all(p["datasource"]["uid"] == "${datasource}" for p in board["panels"])  # importable as is


class Recorder:
    """Stands in for ray.util.metrics.Gauge: records every set."""

    def __init__(self):
        self.sets = []

    def set(self, value, tags):
        self.sets.append((value, dict(tags)))


def test_gauges_take_exactly_their_labels_and_are_refreshed(tmp_path):
    m = RunMetrics(tmp_path, "r", refresh_s=0)  # outside Ray: no gauges, no thread
    with pytest.raises(ValueError, match="cropi_stage_seconds takes labels"):
        m.gauge("cropi_stage_seconds", 1.0, stage="train")
    with pytest.raises(ValueError, match="cropi_phase takes labels"):
        m.gauge("cropi_phase", 1, set="")
    m.gauge("cropi_stage_seconds", 2.5, phase=1, stage="train")
    assert m.last == {("cropi_stage_seconds", (("phase", "1"), ("stage", "train"))): 2.5}

    m = RunMetrics(tmp_path, "r", refresh_s=0)
    m.gauges = {n: Recorder() for n in GAUGES}
    m.gauge("cropi_phase", 2)
    m.gauge("cropi_val_pass_at_1", 0.5, set="add")
    m.gauge("cropi_phase", 3)
    m._stop.clear()
    import threading

    t = threading.Thread(target=m._refresh, args=(0.05,), daemon=True)
    t.start()
    time.sleep(0.3)
    m._stop.set()
    t.join(2)
    phase = m.gauges["cropi_phase"].sets
    assert phase[:2] == [(2.0, {"run": "r"}), (3.0, {"run": "r"})]
    assert len(phase) >= 4 and all(s == (3.0, {"run": "r"}) for s in phase[2:])  # the last value, again
    assert set(map(str, m.gauges["cropi_val_pass_at_1"].sets)) == {str((0.5, {"run": "r", "set": "add"}))}
    m.on_step({"phase": 0, "step": 4, "reward_mean": 0.25, "tokens_per_s": 10.0, "val_pass@1/add": 0.75})
    assert m.gauges["cropi_step"].sets[-1] == (4.0, {"run": "r"})
    assert m.gauges["cropi_val_pass_at_1"].sets[-1] == (0.75, {"run": "r", "set": "add"})
    assert (tmp_path / "metrics.jsonl").exists() is False  # gauges only; events go to metrics.jsonl
    m.event("stage", stage="train")
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["stage"] == "train"


def test_report_timings_separate_start_up_from_work(tmp_path):
    from cropi.report import _timings
    from cropi.store.files import append_jsonl
    from cropi.store.paths import RunPaths

    paths = RunPaths(tmp_path)
    for e in [{"time": 1.0, "event": "stage", "stage": "buffer", "phase": None, "seconds": 50.0},
              {"time": 2.0, "event": "stage", "stage": "influence", "phase": 0, "seconds": 20.0, "startup_seconds": 8.0},
              {"time": 3.0, "event": "stage", "stage": "train", "phase": 0, "seconds": 30.0, "startup_seconds": 12.5}]:
        append_jsonl(e, paths.metrics)
    t = _timings(paths, tmp_path / "t.png")
    assert t == {"all/buffer": 50.0, "phase-0/influence": 12.0, "phase-0/influence start-up": 8.0,
                 "phase-0/train": 17.5, "phase-0/train start-up": 12.5}
