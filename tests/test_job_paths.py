"""Relative paths inside a `ray job submit --working-dir` job: outputs refused, inputs made
absolute when the upload has them, refused with what to pass when it has not (cropi/job_paths.py)."""

import json
import shutil
from pathlib import Path

import pytest

from cropi.config import load_config
from cropi.errors import CropiError
from cropi.job_paths import JOB_ENV, check_job_paths

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def in_job(tmp_path, monkeypatch):
    """A job's temporary working directory holding the uploaded (git-tracked) files only."""
    wd = tmp_path / "working_dir_files" / "_ray_pkg_abc"
    shutil.copytree(ROOT / "configs", wd / "configs")
    monkeypatch.chdir(wd)
    monkeypatch.setenv(JOB_ENV, json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_abc.zip"}}))
    return wd


def test_outside_a_job_nothing_changes(monkeypatch):
    monkeypatch.delenv(JOB_ENV, raising=False)
    cfg = load_config(ROOT / "configs" / "tiny-cpu.yaml")
    before = cfg.to_dict()
    check_job_paths(cfg)
    assert cfg.to_dict() == before


def test_relative_run_dir_is_refused_with_what_to_pass(in_job):
    cfg = load_config("configs/tiny-cpu.yaml", ["model.path=/abs/model", "data.data_dir=/abs/tasks"])
    with pytest.raises(CropiError, match=r"run.dir 'runs/tiny' is a relative path.*lost when the job ends.*"
                                         r"--set run.dir=/shared/runs/tiny"):
        check_job_paths(cfg)


def test_relative_model_not_uploaded_is_refused(in_job):
    cfg = load_config("configs/tiny-cpu.yaml", ["run.dir=/abs/run", "data.data_dir=/abs/tasks"])
    with pytest.raises(CropiError, match=r"model.path 'artifacts/base-model' is a relative path.*not there.*"
                                         r"artifacts/ are not uploaded"):
        check_job_paths(cfg)


def test_uploaded_relative_inputs_become_absolute(in_job):
    (in_job / "data").mkdir()
    for n in ("train.jsonl", "val.jsonl", "reward.py"):
        (in_job / "data" / n).write_text("")
    (in_job / "model").mkdir()
    cfg = load_config("configs/tiny-cpu.yaml", ["run.dir=/abs/run", "model.path=model", "data.synthetic=false",
                                                "data.train_path=data/train.jsonl", "data.val_paths={v: data/val.jsonl}",
                                                "data.reward_fn=data/reward.py:compute_score"])
    check_job_paths(cfg)
    assert cfg.model.path == str(in_job / "model")
    assert cfg.data.train_path == str(in_job / "data" / "train.jsonl")
    assert cfg.data.val_paths == {"v": str(in_job / "data" / "val.jsonl")}
    assert cfg.data.reward_fn == f"{in_job / 'data' / 'reward.py'}:compute_score"


def test_the_job_entry_point_exits_2_naming_the_field(in_job, capsys):
    from ray_jobs.cropi_loop import main

    assert main(["--config", "configs/tiny-cpu.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cropi: error: run.dir 'runs/tiny' is a relative path")
    assert not (in_job / "runs").exists()
