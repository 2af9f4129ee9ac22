"""Paths in a config submitted with `ray job submit --working-dir .`.

Such a job runs in a temporary copy of the working directory that holds only what was uploaded
(git-ignored folders such as artifacts/ and runs/ are not). So, inside a job with a working_dir:
- an output path (run.dir; data.data_dir for the synthetic suite) must be absolute: relative, the
  run would be written into the throwaway copy and lost with it;
- an input path (model.path, data.train_path, data.val_paths, a reward file) that is relative must
  exist in the uploaded copy, and is then made absolute; if it does not, the job stops here with
  what to pass instead, not later with "model not found".
Outside a job (a local `cropi run`, or a job without a working_dir) nothing changes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cropi.errors import CropiError
from cropi.model.hub import cached_snapshot, looks_like_hub_id

JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for the entrypoint


def job_working_dir() -> str | None:
    """The working_dir this process was submitted with, if it runs as a Ray job."""
    raw = os.environ.get(JOB_ENV)
    if not raw:
        return None
    try:
        return (json.loads(raw).get("runtime_env") or {}).get("working_dir") or None
    except (json.JSONDecodeError, AttributeError):
        return None


def _refuse(field: str, value: str, what: str, hint: str) -> CropiError:
    return CropiError(f"{field} {value!r} is a relative path, and this Ray job runs in a temporary copy of the "
                      f"submitted working directory ({os.getcwd()}): {what}. Pass an absolute path visible to "
                      f"every node: --set {field}={hint}")


def check_job_paths(cfg) -> None:
    """Refuse or absolutise the config's relative paths when running as a job with a working_dir."""
    if job_working_dir() is None:
        return

    outputs = [("run.dir", cfg.run.dir)] + ([("data.data_dir", cfg.data.data_dir)] if cfg.data.synthetic else [])
    for field, value in outputs:
        if not Path(value).is_absolute():
            raise _refuse(field, value, "the outputs would be written there and lost when the job ends",
                          f"/shared/{value}")

    def input_path(field: str, value: str) -> str:
        if not value or Path(value).is_absolute():
            return value
        if Path(value).exists():
            return str(Path(value).resolve())
        raise _refuse(field, value, "it is not there (git-ignored folders such as artifacts/ are not uploaded"
                      + (", and no hub id of that name is in the Hugging Face cache" if field == "model.path" else "")
                      + ")", f"/abs/path/{value}")

    if not (looks_like_hub_id(cfg.model.path) and cached_snapshot(cfg.model.path, cfg.model.revision or None)):
        cfg.model.path = input_path("model.path", cfg.model.path)  # 'org/name' not cached: a path, or a typo
    if not cfg.data.synthetic:
        tp = cfg.data.train_path
        cfg.data.train_path = [input_path(f"data.train_path[{i}]", v) for i, v in enumerate(tp)] \
            if isinstance(tp, list) else input_path("data.train_path", tp)
        cfg.data.val_paths = {k: input_path(f"data.val_paths.{k}", v) for k, v in cfg.data.val_paths.items()}
    mod = cfg.data.reward_fn.rsplit(":", 1)[0]
    if mod.endswith(".py"):
        cfg.data.reward_fn = input_path("data.reward_fn", mod) + ":" + cfg.data.reward_fn.rsplit(":", 1)[1]

