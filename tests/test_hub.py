"""model.path as a hub id: resolved on the driver through the local Hugging Face cache, offline
when the cache has it (a cache entry built here; no network), refused clearly when it has not."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cropi.model.hub import looks_like_hub_id

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize("path, hub", [
    ("Qwen/Qwen2.5-1.5B", True), ("meta-llama/Llama-3.2-1B", True),
    ("artifacts/base-model", False),          # its parent exists here: a local path not built yet
    ("/abs/model", False), ("./rel/model", False), ("~/m/x", False), ("a/b/c", False), ("plain", False),
])
def test_what_counts_as_a_hub_id(path, hub):
    assert looks_like_hub_id(path) is hub


def hf_cache_entry(home: Path, repo: str, model_dir: Path) -> Path:
    """The layout huggingface_hub writes: models--ORG--NAME/{refs/main, snapshots/COMMIT/...}."""
    entry = home / "hub" / ("models--" + repo.replace("/", "--"))
    snap = entry / "snapshots" / COMMIT
    shutil.copytree(model_dir, snap, ignore=shutil.ignore_patterns("*.json.tmp"))
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(COMMIT)
    return snap


def cli(home: Path, *args, offline=True):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update({"HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1"})
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, "-m", "cropi.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_hub_id_resolved_from_the_local_cache(tiny_model, tmp_path):
    snap = hf_cache_entry(tmp_path / "hf", "cropi-test/tiny-math", tiny_model)
    r = cli(tmp_path / "hf", "plan", "configs/tiny-cpu.yaml", "--json", "--set", "model.path=cropi-test/tiny-math")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert Path(plan["model"]) == snap and plan["model_parameters"] > 0  # what every actor is handed


def test_hub_id_missing_from_the_cache_offline_is_refused(tmp_path):
    (tmp_path / "hf").mkdir()
    r = cli(tmp_path / "hf", "plan", "configs/tiny-cpu.yaml", "--set", "model.path=cropi-test/not-cached")
    assert r.returncode == 2
    assert "cropi: error: model.path 'cropi-test/not-cached'" in r.stderr and "HF_HUB_OFFLINE" in r.stderr
    assert str(tmp_path / "hf" / "hub") in r.stderr and "Traceback" not in r.stderr


def test_resolve_keeps_local_paths(tiny_model):
    from cropi.config import load_config
    from cropi.model.hub import resolve

    cfg = resolve(load_config(None, [f"model.path={tiny_model}"]))
    assert cfg.model.path == str(tiny_model)
