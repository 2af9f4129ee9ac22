"""Bad input, table-driven: each case is refused with `cropi: error:` naming the culprit, exit 2,
before anything is written (issue 14; every case here was accepted or failed late before)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cropi.cli import main
from cropi.config import load_config


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
                   "--set", "resources.influence.num_gpus=1", "--set", "resources.placement=split"])
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

    with pytest.raises(CropiError, match=r"returned .* on train prompt 7; expected a finite number in \[0, 1\]"):
        score(lambda r, g: value, "resp", "1", "train prompt 7")
    assert score(lambda r, g: True, "resp", "1", "x") == 1.0 and score(lambda r, g: 0, "resp", "1", "x") == 0.0


# ---- the table: every bad input a new user tried, one builder each ---------------------------------
# A builder gets tmp_path and returns (argv after `cropi`, what the message must name). Each case
# must exit 2 with `cropi: error:` and no traceback, and leave tmp_path/run as it was (absent, or
# byte for byte what the builder put there).

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "artifacts" / "base-model"


def _rollout(tmp_path, *extra):
    return ["rollout", "configs/tiny-cpu.yaml", "--set", f"run.dir={tmp_path / 'run'}", *extra]


def _copy_model(tmp_path, name="model"):
    dst = tmp_path / name
    shutil.copytree(MODEL, dst)
    return dst


def _model_case(mutate):
    def build(tmp_path):
        m = _copy_model(tmp_path)
        culprit = mutate(m)
        return _rollout(tmp_path, "--set", f"model.path={m}"), culprit
    return build


def _truncate(m):
    f = m / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return "is truncated"


def _garbage_weights(m):
    (m / "model.safetensors").write_bytes(b"\x00" * 4)
    return "not a readable safetensors file"


def _data_case(train=None, val=None, culprit=""):
    def build(tmp_path):
        return _rollout(tmp_path, *_data(tmp_path, train=train, val=val)), culprit
    return build


def _file_case(name, content, culprit, split="train"):
    def build(tmp_path):
        argv = _data(tmp_path)
        f = tmp_path / name
        f.write_bytes(content) if isinstance(content, bytes) else f.write_text(content)
        key = "data.train_path" if split == "train" else "data.val_paths"
        argv = [a if not a.startswith(key) else (f"{key}={f}" if split == "train" else f"{key}={{v: {f}}}")
                for a in argv]
        return _rollout(tmp_path, *argv), culprit
    return build


def _parquet_truncated(tmp_path):
    from cropi.data.dataset import write_rows

    f = write_rows([_row()] * 8, tmp_path / "train.parquet")
    f.write_bytes(f.read_bytes()[:-20])
    argv = _data(tmp_path)
    argv = [a if not a.startswith("data.train_path") else f"data.train_path={f}" for a in argv]
    return _rollout(tmp_path, *argv), "not a readable Parquet file"


def _reward_case(spec, culprit):
    def build(tmp_path):
        return _rollout(tmp_path, "--set", f"data.reward_fn={spec(tmp_path) if callable(spec) else spec}"), culprit
    return build


def _broken_reward_file(tmp_path):
    (tmp_path / "r.py").write_text("def f(:\n")
    return f"{tmp_path / 'r.py'}:f"


def _run_dir_case(setup, cmd="run", culprit="", extra=()):
    def build(tmp_path):
        run = tmp_path / "run"
        run.mkdir()
        setup(run)
        argv = [cmd, "configs/tiny-cpu.yaml", "--set", f"run.dir={run}", *extra]
        return argv, culprit
    return build


def _begun_phase(run):
    from cropi.store.run_record import claim_phase

    claim_phase(load_config("configs/tiny-cpu.yaml", [f"run.dir={run}"]), 0, "cropi")
    (run / "phase-0" / "influence").mkdir()


def _half_written_checkpoint(run):
    ckpt = run / "phase-0" / "checkpoint"
    shutil.copytree(MODEL, ckpt)
    w = ckpt / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])


def _finished_buffer_with_a_truncated_shard(run):
    from cropi.store.buffer import buffer_hash

    cfg = load_config("configs/tiny-cpu.yaml", [f"run.dir={run}"])
    (run / "buffer" / "train").mkdir(parents=True)
    (run / "buffer" / "manifest.json").write_text(json.dumps({"config_hash": buffer_hash(cfg), "complete": True,
                                                              "splits": {}}))
    pq.write_table(pa.table({"x": [1, 2, 3]}), run / "buffer" / "train" / "shard-00000.parquet")
    shard = run / "buffer" / "train" / "shard-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-10])


def _yaml_case(text, culprit):
    def build(tmp_path):
        (tmp_path / "c.yaml").write_text(text)
        return ["rollout", str(tmp_path / "c.yaml"), "--set", f"run.dir={tmp_path / 'run'}"], culprit
    return build


TABLE = {
    # config
    "unknown field": lambda t: (_rollout(t, "--set", "trainer.lrr=1"), "trainer.lrr"),
    "unknown section": _yaml_case("trainr:\n  lr: 1\n", "trainr"),
    "wrong type": lambda t: (_rollout(t, "--set", "trainer.lr=fast"), "trainer.lr"),
    "out of range": lambda t: (_rollout(t, "--set", "selection.alpha=1.5"), "selection.alpha"),
    "not a choice": lambda t: (_rollout(t, "--set", "influence.mode=fast"), "influence.mode"),
    "YAML that does not parse": _yaml_case("run: [\n", "c.yaml"),
    "YAML that is a list": _yaml_case("- 1\n- 2\n", "c.yaml"),
    "targeted set that does not exist": lambda t: (_rollout(t, "--set", "data.targeted=[nope]"), "data.targeted"),
    "reward range reversed": lambda t: (_rollout(t, "--set", "data.reward_range=[1, 0]"), "data.reward_range"),
    "tracker unknown": lambda t: (_rollout(t, "--set", "run.trackers=[mlflow]"), "run.trackers"),
    "override without =": lambda t: (_rollout(t, "--set", "trainer.lr"), "trainer.lr"),
    "resources larger than the cluster": lambda t: (_rollout(t, "--set", "resources.local_num_cpus=2", "--set",
                                                             "resources.rollout.num_cpus=4"),
                                                    "buffer: 1 bundle needs 4 CPU in all and the cluster has 2, so it "
                                                    "can never be placed: lower resources.rollout.num_workers"),
    # datasets
    "row without data_source": _data_case(train=[{"prompt": "1+1=", "reward_model": {"ground_truth": "2"}}] * 2,
                                          culprit="data_source"),
    "row without reward_model": _data_case(train=[{"data_source": "t", "prompt": "1+1="}] * 2,
                                           culprit="reward_model.ground_truth"),
    "message without role": _data_case(train=[{"data_source": "t", "prompt": [{"content": "x"}],
                                               "reward_model": {"ground_truth": "2"}}], culprit="prompt[0]"),
    "extra_info not a mapping": _data_case(train=[{**_row(), "extra_info": [1]}], culprit="extra_info"),
    "prompt over max_prompt_length": lambda t: (_rollout(t, *_data(t, train=[_row()] * 3 + [_row(prompt="1+1=" * 40)]),
                                                         "--set", "rollout.max_prompt_length=40"),
                                                "train.jsonl row 3: the prompt is"),
    "OpenRLHF key that a row lacks": lambda t: (_rollout(t, *_data(t), "--set", "data.input_key=input"),
                                                "field 'input' (data.input_key)"),
    "reward weights of another length": lambda t: (_rollout(t, "--set", "data.reward_fns=[cropi.data.rewards:exact_integer]",
                                                            "--set", "data.reward_weights=[1, 2]"), "data.reward_weights"),
    "empty validation set": _file_case("val.jsonl", "", "has no rows", split="val"),
    "broken JSONL line": _file_case("train.jsonl", json.dumps(_row()) + "\n{not json\n" + json.dumps(_row()) + "\n",
                                    "train.jsonl"),
    "truncated Parquet": _parquet_truncated,
    "unsupported dataset format": _file_case("train.csv", "a,b\n", "unsupported dataset format"),
    "missing dataset file": lambda t: (_rollout(t, *[a if not a.startswith("data.train_path") else
                                                     f"data.train_path={t / 'nope.jsonl'}" for a in _data(t)]),
                                       "does not exist"),
    # models
    "missing model path": lambda t: (_rollout(t, "--set", f"model.path={t / 'nope'}"), "does not exist"),
    "model without config.json": _model_case(lambda m: ((m / "config.json").unlink(), "no config.json")[1]),
    "model config.json not JSON": _model_case(lambda m: ((m / "config.json").write_text("{"), "not valid JSON")[1]),
    "model without weights": _model_case(lambda m: ((m / "model.safetensors").unlink(), "no weights")[1]),
    "truncated safetensors": _model_case(_truncate),
    "garbage safetensors": _model_case(_garbage_weights),
    "index naming a missing shard": _model_case(lambda m: ((m / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "model-00002.safetensors"}})), "missing")[1]),
    "hub id offline and not cached": lambda t: (_rollout(t, "--set", "model.path=nobody/no-such-model"),
                                                "nobody/no-such-model"),
    # reward functions
    "reward module missing": _reward_case("no_such_mod:f", "no_such_mod"),
    "reward function missing": _reward_case("cropi.data.rewards:nope", "nope"),
    "reward spec without colon": _reward_case("cropi.data.rewards", "module:function"),
    "reward file missing": _reward_case(lambda t: f"{t / 'none.py'}:f", "none.py does not exist"),
    "reward file that does not import": _reward_case(_broken_reward_file, "SyntaxError"),
    # run directories
    "corrupt run.json": _run_dir_case(lambda r: (r / "run.json").write_text("{torn"), culprit="run.json"),
    "another method's run": _run_dir_case(lambda r: (r / "run.json").write_text(json.dumps({"method": "random"})),
                                          culprit="holds a 'random' run"),
    "buffer shards without a manifest": _run_dir_case(
        lambda r: ((r / "buffer" / "train").mkdir(parents=True), (r / "buffer" / "train" / "shard-00000.parquet").write_bytes(b"x")),
        cmd="rollout", culprit="holds shards but no manifest.json"),
    "truncated shard in a finished buffer": _run_dir_case(_finished_buffer_with_a_truncated_shard, cmd="rollout",
                                                          culprit="shard-00000.parquet: not a whole Parquet file"),
    "another config's run": _run_dir_case(_begun_phase, extra=("--set", "selection.alpha=0.2"),
                                          culprit="selection.alpha: 0.1 -> 0.2"),
    "half-written checkpoint": _run_dir_case(_half_written_checkpoint, cmd="train", extra=("--phase", "1"),
                                             culprit="model.safetensors is truncated"),
    "status of a non-run directory": _run_dir_case(lambda r: (r / "x.txt").write_text("x"), cmd="status",
                                                   culprit="not a cropi run directory"),
}


@pytest.mark.parametrize("case", list(TABLE))
def test_bad_input_table(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv, culprit = TABLE[case](tmp_path)
    if argv[0] == "status":
        argv = ["status", argv[argv.index("--set") + 1].split("=", 1)[1]]
    run = tmp_path / "run"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} if run.exists() else None
    rc = main(argv)
    err = capsys.readouterr().err
    # the error comes last (a Ray that was started may have logged before it)
    assert rc == 2 and ("\n" + err).count("\ncropi: error:") == 1, err
    err = err[err.index("cropi: error:"):]
    assert culprit in err, err
    assert "Traceback" not in err
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} if run.exists() else None
    assert after == before, f"{case}: the run directory changed: {sorted(set(after or {}) ^ set(before or {}))}"
