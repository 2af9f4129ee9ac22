"""The run directory's layout: every path and file name of a run, in one place.

    RUN_DIR/run.json                          the run's method and the history of every start
    RUN_DIR/run_result.json                   written when the loop finishes
    RUN_DIR/metrics.jsonl                     one event per line (stages, drift, phase ends)
    RUN_DIR/report/                           cropi report: validation.png, timings.png, selection.png, report.md
    RUN_DIR/buffer/manifest.json              offline trajectories (cropi.store.buffer)
    RUN_DIR/buffer/train/shard-00000.parquet, RUN_DIR/buffer/val/<set>/shard-00000.parquet
    RUN_DIR/phase-M/phase.json                what phase M was computed with (cropi.store.run_record)
    RUN_DIR/phase-M/refresh/shard-i.parquet   zero-gradient prompts re-rolled with theta_M (optional)
    RUN_DIR/phase-M/refresh/manifest.json     what the zero-gradient refresh re-rolled
    RUN_DIR/phase-M/influence/                per-prompt gradient outputs (cropi.store.influence)
    RUN_DIR/phase-M/rebuffer/                 the drift re-roll of the buffer with theta_M (+ manifest.json)
    RUN_DIR/phase-M/influence-before-rebuffer/  the scores on the drifted buffer, set aside
    COMPARE_ROOT/seed-S/ARM/                  one run directory per (seed, arm) of `cropi compare`
    COMPARE_ROOT/seed-S/buffer/               the seed's buffer, linked from each arm that reads one
    RUN_DIR/phase-M/selection.parquet         scores, ranks, selected flag (cropi.store.selection)
    RUN_DIR/phase-M/selection_summary.json, selection.png
    RUN_DIR/phase-M/trainer_state/            DeepSpeed checkpoints to resume the phase mid-way
    RUN_DIR/phase-M/train_metrics.jsonl       one line per GRPO step
    RUN_DIR/phase-M/eval.jsonl                one line per evaluation: each set's per-prompt pass rates
    RUN_DIR/phase-M/checkpoint/               Hugging Face checkpoint theta_{M+1}
    RUN_DIR/phase-M/train_summary.json        written last: the phase is complete
"""

from __future__ import annotations

from pathlib import Path

from cropi.errors import CropiError

SHARD_GLOB = "shard-*.parquet"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


class RunPaths:
    """Paths of one run directory. Build from a directory, or `RunPaths.of(cfg)`."""

    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir)

    @classmethod
    def of(cls, cfg) -> "RunPaths":
        return cls(cfg.run.dir)

    # the whole run
    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def run_result(self) -> Path:
        return self.root / "run_result.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def buffer(self) -> Path:
        return self.root / "buffer"

    # one phase
    def phase(self, m: int) -> Path:
        return self.root / f"phase-{m}"

    def phases(self) -> list[int]:
        """Numbers of the existing phase directories, ascending."""
        return sorted(int(p.name.split("-")[1]) for p in self.root.glob("phase-*")
                      if p.is_dir() and p.name.split("-")[1].isdigit())

    def phase_record(self, m: int) -> Path:
        return self.phase(m) / "phase.json"

    def refresh(self, m: int) -> Path:
        return self.phase(m) / "refresh"

    def refresh_manifest(self, m: int) -> Path:
        return self.refresh(m) / "manifest.json"

    def influence(self, m: int) -> Path:
        return self.phase(m) / "influence"

    def influence_before_rebuffer(self, m: int) -> Path:
        return self.phase(m) / "influence-before-rebuffer"

    def rebuffer(self, m: int) -> Path:
        return self.phase(m) / "rebuffer"

    def rebuffer_manifest(self, m: int) -> Path:
        return self.rebuffer(m) / "manifest.json"

    def selection(self, m: int) -> Path:
        return self.phase(m) / "selection.parquet"

    def selection_summary(self, m: int) -> Path:
        return self.phase(m) / "selection_summary.json"

    def selection_plot(self, m: int) -> Path:
        return self.phase(m) / "selection.png"

    def trainer_state(self, m: int) -> Path:
        return self.phase(m) / "trainer_state"

    def train_metrics(self, m: int) -> Path:
        return self.phase(m) / "train_metrics.jsonl"

    def eval_details(self, m: int) -> Path:
        return self.phase(m) / "eval.jsonl"

    def train_summary(self, m: int) -> Path:
        return self.phase(m) / "train_summary.json"

    def checkpoint(self, m: int) -> Path:
        return self.phase(m) / "checkpoint"

    def phase_done(self, m: int) -> bool:
        return self.train_summary(m).is_file() and (self.checkpoint(m) / "config.json").is_file()


def compare_seed_dir(root: str | Path, seed: int) -> Path:
    """A comparison's folder for one seed: its arms' run directories and the shared buffer."""
    return Path(root) / f"seed-{seed}"


def compare_arm_dir(root: str | Path, seed: int, arm: str) -> Path:
    return compare_seed_dir(root, seed) / arm


def phase_start_checkpoint(cfg, phase: int) -> str:
    """theta_M: the base model for phase 0, else the checkpoint the previous phase saved."""
    if phase < 0:
        raise CropiError(f"--phase must be >= 0, got {phase}")
    if phase == 0:
        return str(Path(cfg.model.path).resolve())
    prev = RunPaths.of(cfg).checkpoint(phase - 1)
    if not (prev / "config.json").is_file():
        raise CropiError(f"phase {phase} starts from {prev}, which does not exist: finish phase {phase - 1} first")
    return str(prev.resolve())
