"""Quiet by default: the job log shows cropi's own lines (a line per stage start and end, progress
bars for the buffer, influence and training, a line per step) and errors. The engines' chatter
stays out of it: vLLM's CPU warnings and per-sync "RotaryEmbedding: Failed to load weights",
transformers' per-load progress bars, FutureWarnings from torch/vLLM internals, C++ warnings.

`--verbose` (any cropi command or ray_jobs entry point) or `CROPI_VERBOSE=1` brings them back.
The setting travels to every actor through the environment WorkerPool gives it (actor_env).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

VERBOSE_ENV = "CROPI_VERBOSE"

# Set before an actor imports torch, vLLM or transformers (they read these at import).
QUIET_ENV = {
    "VLLM_LOGGING_LEVEL": "ERROR",
    "TORCH_CPP_LOG_LEVEL": "ERROR",          # c10 warnings such as vLLM CPU's NUMA binding notice
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",     # transformers' "Loading weights" / "Writing model shards"
    "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",
}


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "0") == "1"


def set_verbose(on: bool) -> None:
    os.environ[VERBOSE_ENV] = "1" if on else "0"


def actor_env() -> dict[str, str]:
    """Environment variables every cropi actor starts with."""
    if verbose():
        return {VERBOSE_ENV: "1"}
    return {VERBOSE_ENV: "0", **QUIET_ENV}


# loggers that warn before vLLM has configured its own logging (so VLLM_LOGGING_LEVEL does not
# reach them yet): "Triton is installed, but doesn't include CPU backend" on every CPU engine
EARLY_LOGGERS = ("vllm.triton_utils.importing",)


def quiet_early_loggers() -> None:
    """Raise EARLY_LOGGERS to ERROR unless verbose; call before importing vLLM."""
    import logging

    if not verbose():
        for name in EARLY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def quiet_prints() -> Iterator[None]:
    """Drop what a library call prints to stdout (unless verbose): DeepSpeed's CPU backend prints
    "DeepSpeed Shared Memory Comm built successfully" on every rank at start-up. Errors still raise."""
    if verbose():
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield
