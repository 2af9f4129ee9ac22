"""Joining or starting Ray: a cluster at RAY_ADDRESS / resources.ray_address, else local."""

from __future__ import annotations

import os
from contextlib import contextmanager

from cropi import preempt
from cropi.config import Config
from cropi.errors import CropiError, STORAGE_ERRNOS, storage_error


def check_device(cfg: Config) -> None:
    """Before anything is written: `resources.device: cuda` with a local Ray head (no cluster
    address) needs a CUDA GPU on this machine. On a cluster the driver may sit on a CPU-only head;
    there a missing GPU shows as a placement that cannot be met (cropi.placement.reserve)."""
    if cfg.resources.device != "cuda" or os.environ.get("RAY_ADDRESS") or cfg.resources.ray_address:
        return
    import torch

    if not torch.cuda.is_available():
        from cropi.errors import ConfigError

        raise ConfigError("resources.device is 'cuda', but this machine has no usable CUDA GPU "
                          "(torch.cuda.is_available() is False) and no resources.ray_address names a cluster "
                          "with GPUs; use resources.device=cpu here, or install the gpu extra on a GPU machine")


@contextmanager
def ray_session(cfg: Config, dashboard: bool = False):
    """Yield with Ray initialised; shut it down after only if we started it here."""
    import ray

    if ray.is_initialized():
        yield
        return
    check_device(cfg)
    address = os.environ.get("RAY_ADDRESS") or cfg.resources.ray_address
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        from cropi.placement import local_cpus

        ray.init(num_cpus=local_cpus(cfg), include_dashboard=dashboard,
                 dashboard_host="127.0.0.1", configure_logging=False, log_to_driver=True)
    preempt.rearm()  # ray.init puts its own SIGTERM handler (which dies at once) in place of ours
    try:
        yield
    finally:
        ray.shutdown()


def get(refs):
    """ray.get, but a CropiError raised inside an actor surfaces as itself (a clean message that
    names the row or file), not wrapped in a RayTaskError traceback."""
    import ray

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, CropiError):
            raise type(cause)(str(cause)) from None
        if isinstance(cause, OSError) and cause.errno in STORAGE_ERRNOS:  # e.g. DeepSpeed saving to a full disk
            raise storage_error(cause) from None
        raise
