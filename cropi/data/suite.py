"""Where a run's prompts come from: the synthetic suite (written once per config) or user files."""

from __future__ import annotations

from pathlib import Path

from cropi import seeds
from cropi.config import SUITE, Config
from cropi.data.dataset import PromptRow, load_prompts
from cropi.data.tasks import write_suite
from cropi.hashing import stable_hash
from cropi.store.files import write_json
from cropi.data.rewards import check_ground_truths, load_reward
from cropi.data.prompts import PromptEncoder


def suite_key(cfg: Config) -> str:
    """The synthetic suite's folder key: the fields declared to feed it (cropi.config)."""
    return stable_hash(cfg.artifact_inputs(SUITE))[:10]


def data_paths(cfg: Config) -> tuple[list[Path], dict[str, Path]]:
    """([training files], {validation set name: path}); writes the synthetic suite if it is missing or stale."""
    d = cfg.data
    if not d.synthetic:
        files = d.train_path if isinstance(d.train_path, list) else [d.train_path]
        return [Path(f) for f in files], {name: Path(p) for name, p in d.val_paths.items()}
    want = cfg.artifact_inputs(SUITE)
    key = suite_key(cfg)
    out = Path(d.data_dir) / f"suite-{key}"  # one folder per suite: configs never overwrite each other's data
    stamp = out / "suite.json"
    if not stamp.is_file():
        write_suite(out, d.families, d.train_size, d.val_size, seeds.task_suite(cfg.run.seed),
                    d.wrong_label_share, d.conflict_of, d.conflict_share if d.conflict_of else 0.0)
        write_json(want, stamp)  # written last: the suite is complete
    return [out / "train.parquet"], {fam: out / f"val_{fam}.parquet" for fam in d.families}


def load_data(cfg: Config, with_counts: bool = False):
    """The pool and the validation sets, each row checked, ground truths included (by the reward
    function's own check_ground_truth, when it has one), and prompts over rollout.max_prompt_length
    refused or dropped (cropi.data.prompts) once the model's tokenizer exists. With with_counts,
    also {"train" | set: {overlong, filtered, truncated}}."""

    train_paths, val_paths = data_paths(cfg)
    keys = (cfg.data.input_key, cfg.data.label_key, cfg.data.default_data_source)
    train = load_pool(train_paths, *keys)
    val = {name: load_prompts(p, *keys) for name, p in val_paths.items()}
    fn = load_reward(cfg.data)
    where_train = ", ".join(str(p) for p in train_paths)
    check_ground_truths(fn, train, where_train)
    for name, rows in val.items():
        check_ground_truths(fn, rows, str(val_paths[name]))
    counts = {}
    enc = _encoder(cfg)
    if enc is not None:
        train, counts["train"] = enc.apply(train, where_train)
        for name in list(val):
            val[name], counts[name] = enc.apply(val[name], str(val_paths[name]))
            if not val[name]:
                from cropi.errors import DataError

                raise DataError(f"validation set {name!r} ({val_paths[name]}): every prompt is over "
                                f"rollout.max_prompt_length {enc.max_len}")
    return (train, val, counts) if with_counts else (train, val)


def load_pool(paths: list[Path], input_key: str = "prompt", label_key: str = "reward_model.ground_truth",
              default_data_source: str = "") -> list[PromptRow]:
    """The training rows of one or more files (verl's train_files), numbered in order across them."""
    rows: list[PromptRow] = []
    for p in paths:
        for r in load_prompts(p, input_key, label_key, default_data_source):
            r.prompt_id = len(rows)
            rows.append(r)
    return rows


def _encoder(cfg: Config):
    """The run's prompt encoder, once its model (tokenizer) exists; None before (make-base-model)."""

    if not (Path(cfg.model.path) / "tokenizer_config.json").is_file():
        return None
    from cropi.model.loading import load_tokenizer

    return PromptEncoder.of(cfg, load_tokenizer(cfg.model.path))


def targeted(cfg: Config, val: dict[str, list[PromptRow]]) -> dict[str, list[PromptRow]]:
    """The validation sets that steer selection (data.targeted; all of them when it is empty)."""
    names = cfg.data.targeted or list(val)
    return {name: val[name] for name in names}
