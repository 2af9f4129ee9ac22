"""Run metrics: one JSON line per event in RUN_DIR/metrics.jsonl, and the same numbers as
`ray.util.metrics` gauges, so they reach the Ray dashboard's Prometheus/Grafana views
(names prefixed `cropi_`; Ray exports them as `ray_cropi_*`)."""

from __future__ import annotations

import time
from pathlib import Path

from cropi.store.files import append_jsonl

GAUGES = {
    "cropi_phase": "current CROPI phase",
    "cropi_step": "current GRPO step within the phase",
    "cropi_reward_mean": "mean reward of the step's rollouts",
    "cropi_val_pass_at_1": "validation pass@1 per set",
    "cropi_selection_seconds": "wall time of the phase's influence + selection",
    "cropi_stage_seconds": "wall time of a stage (buffer, influence, select, train)",
    "cropi_tokens_per_s": "trainer response tokens per second",
    "cropi_kl_drift": "mean per-token KL(pi_theta || beta) on the offline buffer",
}


class RunMetrics:
    def __init__(self, run_dir: str | Path, run_name: str):
        from cropi.store.paths import RunPaths

        self.path = RunPaths(run_dir).metrics
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.run = run_name
        try:
            from ray.util.metrics import Gauge

            self.gauges = {name: Gauge(name, description=desc, tag_keys=("run", "set", "stage"))
                           for name, desc in GAUGES.items()}
        except Exception:  # outside Ray (unit tests): the JSON lines still get written
            self.gauges = {}

    def gauge(self, name: str, value: float, set: str = "", stage: str = "") -> None:
        g = self.gauges.get(name)
        if g is not None:
            g.set(float(value), tags={"run": self.run, "set": set, "stage": stage})

    def event(self, kind: str, **fields) -> None:
        append_jsonl({"time": round(time.time(), 3), "event": kind, **fields}, self.path)

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
