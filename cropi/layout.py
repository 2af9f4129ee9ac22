"""The run directory's layout, in one place.

    RUN_DIR/buffer/                      offline trajectories (rollout)
    RUN_DIR/phase-M/influence/           per-prompt gradient outputs of phase M (influence)
    RUN_DIR/phase-M/refresh/             zero-gradient prompts re-rolled with theta_M (optional)
    RUN_DIR/phase-M/selection.parquet    scores, ranks, selected flag (select)
    RUN_DIR/phase-M/selection_summary.json, selection.png
    RUN_DIR/phase-M/trainer_state/       DeepSpeed checkpoints to resume the phase mid-way (train)
    RUN_DIR/phase-M/train_metrics.jsonl  one line per GRPO step
    RUN_DIR/phase-M/checkpoint/          Hugging Face checkpoint theta_{M+1} (end of phase M)
    RUN_DIR/metrics.jsonl, RUN_DIR/report/   the whole run (cropi run / cropi report)
"""

from __future__ import annotations

from pathlib import Path

from cropi.config import Config
from cropi.errors import CropiError


def phase_dir(cfg: Config, phase: int) -> Path:
    return Path(cfg.run.dir) / f"phase-{phase}"


def phase_start_checkpoint(cfg: Config, phase: int) -> str:
    """theta_M: the base model for phase 0, else the checkpoint the previous phase saved."""
    if phase < 0:
        raise CropiError(f"--phase must be >= 0, got {phase}")
    if phase == 0:
        return str(Path(cfg.model.path).resolve())
    prev = phase_dir(cfg, phase - 1) / "checkpoint"
    if not (prev / "config.json").is_file():
        raise CropiError(f"phase {phase} starts from {prev}, which does not exist: finish phase {phase - 1} first")
    return str(prev.resolve())
