"""Experiment trackers (`run.trackers`): TensorBoard and Weights & Biases get what metrics.jsonl
and train_metrics.jsonl already hold: every GRPO step's metrics (`train/...`, validation pass@1
as `val/pass@1/SET`), each phase's selection summary (`selection/...`) and, at the end, the
report's plots. The x axis is the global step, phase * trainer.steps_per_phase + step.

A resumed run logs the redone steps again at the same global steps (TensorBoard keeps both
points; W&B keys on `global_step`, so its charts stay in order).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cropi.errors import CropiError

SKIP = ("phase", "step", "wall_time")


def step_scalars(m: dict) -> dict[str, float]:
    """A step's metrics as tracker scalars: numbers only, validation sets under val/."""
    out = {}
    for k, v in m.items():
        if k in SKIP or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if k.startswith(VERL_PREFIXES):  # verl's own names, as its dashboards expect them
            out[k] = float(v)
        else:
            out[f"val/{k[len('val_'):]}" if k.startswith("val_pass@1/") else f"train/{k}"] = float(v)
    return out


VERL_PREFIXES = ("critic/", "response_length/", "val-core/", "reward/")


def selection_scalars(summary: dict) -> dict[str, float]:
    """A phase's selection summary as scalars: counts and each family's share of the selection."""
    out = {f"selection/{k}": float(summary[k]) for k in ("pool_size", "eligible", "zero_grad", "selected")
           if isinstance(summary.get(k), (int, float))}
    for fam, c in (summary.get("composition", {}).get("family") or {}).items():
        out[f"selection/family_frac/{fam}"] = float(c["selected_frac"])
        out[f"selection/pool_frac/{fam}"] = float(c["pool_frac"])
    return out


class _TensorBoard:
    def __init__(self, cfg, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise CropiError(f"run.trackers: tensorboard needs the tensorboard package (pip install tensorboard): {e}") from None
        self.w = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def scalars(self, values: dict, step: int) -> None:
        for k, v in values.items():
            self.w.add_scalar(k, v, step)
        self.w.flush()

    def images(self, paths: dict[str, Path], step: int) -> None:
        import matplotlib.image as mpimg

        for name, p in paths.items():
            img = mpimg.imread(str(p))[..., :3]  # RGBA float -> RGB
            self.w.add_image(name, img, step, dataformats="HWC")
        self.w.flush()

    def close(self) -> None:
        self.w.close()


class _WandB:
    def __init__(self, cfg, run_dir: Path):
        try:
            import wandb
        except ImportError as e:
            raise CropiError(f"run.trackers: wandb needs the wandb package (pip install wandb): {e}") from None
        self.wandb = wandb
        run_id = "cropi-" + hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:12]
        try:
            self.run = wandb.init(project=cfg.run.wandb_project, name=run_dir.name, id=run_id, resume="allow",
                                  dir=str(run_dir), config=cfg.to_dict(), reinit="finish_previous")
        except Exception as e:
            raise CropiError(f"run.trackers: wandb could not start a run ({type(e).__name__}: {e}); "
                             "log in (wandb login), or set WANDB_MODE=offline") from None
        self.run.define_metric("global_step")
        self.run.define_metric("*", step_metric="global_step")

    def scalars(self, values: dict, step: int) -> None:
        self.run.log({**values, "global_step": step})

    def images(self, paths: dict[str, Path], step: int) -> None:
        self.run.log({**{name: self.wandb.Image(str(p)) for name, p in paths.items()}, "global_step": step})

    def close(self) -> None:
        self.run.finish()


KINDS = {"tensorboard": _TensorBoard, "wandb": _WandB}


class Trackers:
    """The run's trackers; with none configured every call is a no-op."""

    def __init__(self, cfg, run_dir: str | Path):
        self.steps_per_phase = cfg.trainer.steps_per_phase
        self.open = []
        try:
            for name in cfg.run.trackers:
                self.open.append(KINDS[name](cfg, Path(run_dir)))
        except BaseException:
            self.close()
            raise

    def global_step(self, phase: int, step: int) -> int:
        return phase * self.steps_per_phase + step

    def on_step(self, m: dict) -> None:
        values = step_scalars(m)
        if values:
            for t in self.open:
                t.scalars(values, self.global_step(m["phase"], m["step"]))

    def on_selection(self, phase: int, summary: dict) -> None:
        for t in self.open:
            t.scalars(selection_scalars(summary), self.global_step(phase, 0))

    def on_report(self, report_dir: Path, num_phases: int) -> None:
        pngs = {f"report/{p.stem}": p for p in sorted(Path(report_dir).glob("*.png"))}
        for t in self.open:
            t.images(pngs, self.global_step(num_phases, 0))

    def close(self) -> None:
        for t in self.open:
            t.close()
        self.open = []
