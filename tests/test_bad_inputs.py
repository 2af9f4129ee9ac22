"""Bad input, table-driven: each case is refused with `cropi: error:` naming the culprit, exit 2,
before anything is written (issue 14; every case here was accepted or failed late before)."""

from __future__ import annotations

import json
import math

import pytest

from cropi.cli import main


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _row(prompt="1+1=", truth="2"):
    return {"data_source": "t", "prompt": prompt, "reward_model": {"ground_truth": truth}}


def _data(tmp_path, train=None, val=None):
    tr = _jsonl(tmp_path / "train.jsonl", train or [_row()] * 4)
    va = _jsonl(tmp_path / "val.jsonl", val or [_row()] * 2)
    return ["--set", "data.synthetic=false", "--set", f"data.train_path={tr}", "--set", f"data.val_paths={{v: {va}}}"]


CONFIG_CASES = {
    "group size 1": (["--set", "trainer.group_size=1"], "trainer.group_size"),
    "k_train 1": (["--set", "rollout.k_train=1"], "rollout.k_train"),
    "k_val 1": (["--set", "rollout.k_val=1"], "rollout.k_val"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_config_values_that_cannot_train_are_refused(case, tmp_path, capsys):
    extra, culprit = CONFIG_CASES[case]
    rc = main(["rollout", "configs/tiny-cpu.yaml", "--set", f"run.dir={tmp_path / 'run'}", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("cropi: error:") and culprit in err and ">= 2" in err, err
    assert not (tmp_path / "run").exists()


def test_cuda_without_a_gpu_is_refused_before_anything_is_written(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for cmd in ("rollout", "run"):
        rc = main([cmd, "configs/tiny-cpu.yaml", "--set", f"run.dir={tmp_path / 'run'}", "--set", "resources.device=cuda",
                   "--set", "resources.rollout.num_gpus=1", "--set", "resources.trainer.num_gpus=1",
                   "--set", "resources.influence.num_gpus=1"])
        err = capsys.readouterr().err
        assert rc == 2 and "resources.device is" in err and "GPU" in err, err  # run: the plan check may say it first
    assert not (tmp_path / "run").exists()


def test_an_empty_config_file_is_refused(tmp_path, capsys):
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    rc = main(["rollout", str(tmp_path / "empty.yaml")])
    err = capsys.readouterr().err
    assert rc == 2 and "empty.yaml is empty" in err


DATA_CASES = {
    "empty prompt string": (dict(train=[_row()] * 3 + [_row(prompt="")]), "train.jsonl row 3", "prompt"),
    "blank message": (dict(train=[_row(prompt=[{"role": "user", "content": "  "}])] + [_row()] * 3),
                      "train.jsonl row 0", "no text"),
    "non-numeric truth for exact_integer": (dict(val=[_row(), _row(truth="forty-two")]), "val.jsonl prompt 1",
                                            "'forty-two'"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_dataset_rows_that_would_train_on_nothing_are_refused(case, tmp_path, capsys):
    files, where, what = DATA_CASES[case]
    rc = main(["rollout", "configs/tiny-cpu.yaml", "--set", f"run.dir={tmp_path / 'run'}", *_data(tmp_path, **files)])
    err = capsys.readouterr().err
    assert rc == 2 and where in err and what in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", [2.0, -0.5, math.nan, math.inf, "1", None])
def test_a_reward_outside_zero_one_or_not_a_number_names_the_row(value):
    from cropi.data.rewards import score
    from cropi.errors import CropiError

    with pytest.raises(CropiError, match=r"returned .* on train prompt 7; expected a number in \[0, 1\]"):
        score(lambda r, g: value, "resp", "1", "train prompt 7")
    assert score(lambda r, g: True, "resp", "1", "x") == 1.0 and score(lambda r, g: 0, "resp", "1", "x") == 0.0
