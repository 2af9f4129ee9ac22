"""The one way into a command that runs stages: load, resolve and check a config once.

`cropi run`, `cropi compare` and the Ray job entry points (`ray_jobs/`, which call the same
command code through `cropi.cli.main`) all start here, so each of them refuses the same bad
input the same way before any actor launches:
- the config file and every `--set` (typed fields, names in errors);
- inside a Ray job (`--job`): relative paths made absolute or refused (cropi.job_paths), and the
  job's own cluster joined (resources.ray_address=auto);
- a hub id resolved to a local snapshot, once;
- the model directory (a Hugging Face causal LM with its tokenizer), the device, and the plan
  (fit and placement of every stage, cropi.plan).
"""

from __future__ import annotations

from cropi.config import Config, load_config
from cropi.job_paths import check_job_paths
from cropi.model.hub import resolve
from cropi.model.loading import check_model_dir
from cropi.plan import preflight
from cropi.ray_utils import check_device


def load(config_path: str | None, overrides: list[str], *, job: bool = False) -> Config:
    """The config with its paths made fit for where it runs and model.path a local directory."""
    cfg = load_config(config_path, overrides)
    if job:
        check_job_paths(cfg)  # before resolve: a relative path is judged against the uploaded copy
        if not cfg.resources.ray_address:
            cfg.resources.ray_address = "auto"  # inside a Ray job: join its cluster
    return resolve(cfg)


def check_launch(cfg: Config, methods: list[str]) -> None:
    """Model directory, device, and each method's plan: what must hold before a stage launches."""
    check_model_dir(cfg.model.path)
    for method in methods:
        preflight(cfg, method)  # refuse before anything launches: fit and placement
    check_device(cfg)
