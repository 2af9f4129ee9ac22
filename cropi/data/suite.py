"""Where a run's prompts come from: the synthetic suite (written once per config) or user files."""

from __future__ import annotations

from pathlib import Path

from cropi import seeds
from cropi.config import Config
from cropi.data.dataset import PromptRow, load_prompts
from cropi.data.tasks import write_suite
from cropi.store.files import stable_hash, write_json


def data_paths(cfg: Config) -> tuple[Path, dict[str, Path]]:
    """(train path, {validation set name: path}); writes the synthetic suite if it is missing or stale."""
    d = cfg.data
    if not d.synthetic:
        return Path(d.train_path), {name: Path(p) for name, p in d.val_paths.items()}
    want = {"families": d.families, "train_size": d.train_size, "val_size": d.val_size, "seed": cfg.run.seed}
    if d.wrong_label_share or d.conflict_of:  # absent when unused: earlier suites keep their folders
        want.update(wrong_label_share=d.wrong_label_share, conflict_of=d.conflict_of, conflict_share=d.conflict_share)
    key = stable_hash(want)[:10]
    out = Path(d.data_dir) / f"suite-{key}"  # one folder per suite: configs never overwrite each other's data
    stamp = out / "suite.json"
    if not stamp.is_file():
        write_suite(out, d.families, d.train_size, d.val_size, seeds.task_suite(cfg.run.seed),
                    d.wrong_label_share, d.conflict_of, d.conflict_share if d.conflict_of else 0.0)
        write_json(want, stamp)  # written last: the suite is complete
    return out / "train.parquet", {fam: out / f"val_{fam}.parquet" for fam in d.families}


def load_data(cfg: Config) -> tuple[list[PromptRow], dict[str, list[PromptRow]]]:
    """The pool and the validation sets, each row checked, ground truths included (by the reward
    function's own check_ground_truth, when it has one)."""
    from cropi.data.rewards import check_ground_truths, load_reward

    train_path, val_paths = data_paths(cfg)
    train, val = load_prompts(train_path), {name: load_prompts(p) for name, p in val_paths.items()}
    fn = load_reward(cfg.data)
    check_ground_truths(fn, train, str(train_path))
    for name, rows in val.items():
        check_ground_truths(fn, rows, str(val_paths[name]))
    return train, val


def targeted(cfg: Config, val: dict[str, list[PromptRow]]) -> dict[str, list[PromptRow]]:
    """The validation sets that steer selection (data.targeted; all of them when it is empty)."""
    names = cfg.data.targeted or list(val)
    return {name: val[name] for name in names}
