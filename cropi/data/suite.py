"""Where a run's prompts come from: the synthetic suite (written once per config) or user files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cropi.config import Config
from cropi.data.dataset import PromptRow, load_prompts
from cropi.data.tasks import write_suite


def data_paths(cfg: Config) -> tuple[Path, dict[str, Path]]:
    """(train path, {validation set name: path}); writes the synthetic suite if it is missing or stale."""
    d = cfg.data
    if not d.synthetic:
        return Path(d.train_path), {name: Path(p) for name, p in d.val_paths.items()}
    want = {"families": d.families, "train_size": d.train_size, "val_size": d.val_size, "seed": cfg.run.seed}
    key = hashlib.sha256(json.dumps(want, sort_keys=True).encode()).hexdigest()[:10]
    out = Path(d.data_dir) / f"suite-{key}"  # one folder per suite: configs never overwrite each other's data
    stamp = out / "suite.json"
    if not stamp.is_file():
        write_suite(out, d.families, d.train_size, d.val_size, cfg.run.seed)
        stamp.write_text(json.dumps(want))
    return out / "train.parquet", {fam: out / f"val_{fam}.parquet" for fam in d.families}


def load_data(cfg: Config) -> tuple[list[PromptRow], dict[str, list[PromptRow]]]:
    train_path, val_paths = data_paths(cfg)
    return load_prompts(train_path), {name: load_prompts(p) for name, p in val_paths.items()}
