"""Shared fixtures. The tiny base model is built once (as `make test` does before pytest)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "tiny-cpu.yaml"


@pytest.fixture(scope="session")
def tiny_cfg():
    from cropi.config import load_config

    os.chdir(ROOT)
    return load_config(TINY_CONFIG)


@pytest.fixture(scope="session")
def tiny_model(tiny_cfg) -> Path:
    """Path of the tiny warm-started base model; built here if `make base-model` has not run."""
    from cropi.data.base_model import build_base_model, read_marker
    from cropi.data.suite import load_data

    path = ROOT / tiny_cfg.model.path
    marker = read_marker(path)
    from cropi.data.base_model import base_model_hash

    if not marker or marker.get("config_hash") != base_model_hash(tiny_cfg):
        train, val = load_data(tiny_cfg)
        build_base_model(tiny_cfg, train, val, path, log=lambda *_: None)
    return path
