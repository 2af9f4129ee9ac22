"""Run metrics: one JSON line per event in RUN_DIR/metrics.jsonl, and the same numbers as
`ray.util.metrics` gauges, so they reach the Ray dashboard's Prometheus/Grafana views
(names prefixed `cropi_`; Ray exports them as `ray_cropi_*`; cluster/grafana/cropi.json plots them).

Each gauge has only the labels it needs (no empty ones), and every value last set is set again
every `refresh_s` seconds for the whole run: Ray's exporter drops a gauge that has not been set
for a while, which would leave `cropi_phase` and `cropi_step` blank during influence and selection.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from cropi.store import records
from cropi.store.paths import RunPaths

# name -> (description, label keys besides `run`)
GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "cropi_phase": ("current CROPI phase", ()),
    "cropi_step": ("current GRPO step within the phase", ()),
    "cropi_reward_mean": ("mean reward of the step's rollouts", ()),
    "cropi_val_pass_at_1": ("validation pass@1 per set", ("set",)),
    "cropi_selection_seconds": ("wall time of the phase's influence + selection", ("phase",)),
    "cropi_stage_seconds": ("wall time of a stage (buffer, influence, select, train)", ("phase", "stage")),
    "cropi_tokens_per_s": ("trainer response tokens per second", ()),
    "cropi_kl_drift": ("mean per-token KL(pi_theta || beta) on the offline buffer", ("phase",)),
}


class RunMetrics:
    def __init__(self, run_dir: str | Path, run_name: str, refresh_s: float = 5.0):
        self.path = RunPaths(run_dir).metrics
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.run = run_name
        self.last: dict[tuple, float] = {}  # (name, ((label, value), ...)) -> value, refreshed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        try:
            from ray.util.metrics import Gauge

            self.gauges = {name: Gauge(name, description=desc, tag_keys=("run", *keys))
                           for name, (desc, keys) in GAUGES.items()}
        except Exception:  # outside Ray (unit tests): the JSON lines still get written
            self.gauges = {}
        self._thread = None
        if self.gauges and refresh_s > 0:
            self._thread = threading.Thread(target=self._refresh, args=(refresh_s,), daemon=True,
                                            name="cropi-metrics-refresh")
            self._thread.start()

    def gauge(self, name: str, value: float, **labels) -> None:
        """Set a gauge; `labels` must be exactly the gauge's own (GAUGES), phase as a number."""
        keys = GAUGES[name][1]
        if set(labels) != set(keys):
            raise ValueError(f"gauge {name} takes labels {keys}, got {tuple(labels)}")
        tags = tuple((k, str(labels[k])) for k in keys)
        with self._lock:
            self.last[(name, tags)] = float(value)
        self._set(name, tags, float(value))

    def _set(self, name: str, tags: tuple, value: float) -> None:
        g = self.gauges.get(name)
        if g is not None:
            g.set(value, tags={"run": self.run, **dict(tags)})

    def _refresh(self, every: float) -> None:
        while not self._stop.wait(every):
            with self._lock:
                items = list(self.last.items())
            for (name, tags), v in items:
                try:
                    self._set(name, tags, v)
                except Exception:  # Ray shutting down under us: the next run sets them again
                    return

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def event(self, kind: str, **fields) -> None:
        records.append(records.EVENT, {"time": round(time.time(), 3), "event": kind, **fields}, self.path)

    def on_step(self, m: dict) -> None:
        """Called by the trainer after every GRPO step."""
        self.gauge("cropi_phase", m["phase"])
        self.gauge("cropi_step", m["step"])
        if "reward_mean" in m:
            self.gauge("cropi_reward_mean", m["reward_mean"])
            self.gauge("cropi_tokens_per_s", m["tokens_per_s"])
        for k, v in m.items():
            if k.startswith("val_pass@1/"):
                self.gauge("cropi_val_pass_at_1", v, set=k.split("/", 1)[1])
