"""Every entry point answers bad input with `cropi: error: ...` naming what is wrong, exit 2,
and writes nothing."""

import subprocess
import sys

import pytest

from cropi.cli import main


def _run(argv, capsys):
    rc = main(argv)
    return rc, capsys.readouterr().err


def test_status_and_report_on_a_non_run_directory(tmp_path, capsys):
    for cmd in ("status", "report"):
        rc, err = _run([cmd, str(tmp_path)], capsys)
        assert rc == 2 and "is not a cropi run directory" in err and str(tmp_path) in err
    assert list(tmp_path.iterdir()) == []


def test_train_before_the_previous_phase_and_bad_phase(tmp_path, capsys):
    rc, err = _run(["train", "configs/tiny-cpu.yaml", "--phase", "1", "--selection", "all",
                    "--set", f"run.dir={tmp_path / 'run'}"], capsys)
    assert rc == 2 and "finish phase 0 first" in err
    rc, err = _run(["influence", "configs/tiny-cpu.yaml", "--phase", "-1", "--set", f"run.dir={tmp_path / 'run'}"],
                   capsys)
    assert rc == 2 and "--phase must be >= 0" in err
    assert not (tmp_path / "run").exists()


def test_train_with_a_missing_selection_file(tiny_model, tmp_path, capsys):
    rc, err = _run(["train", "configs/tiny-cpu.yaml", "--phase", "0", "--set", f"run.dir={tmp_path / 'run'}"], capsys)
    assert rc == 2 and "selection.parquet does not exist" in err
    assert not (tmp_path / "run").exists()


def test_run_with_an_unknown_override_and_a_bad_value(capsys):
    rc, err = _run(["run", "configs/tiny-cpu.yaml", "--set", "trainer.steps=3"], capsys)
    assert rc == 2 and "unknown config field trainer.steps" in err
    rc, err = _run(["run", "configs/tiny-cpu.yaml", "--set", "resources.device=tpu"], capsys)
    assert rc == 2 and "resources.device" in err


def test_ray_job_entry_point_rejects_bad_config(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ray_jobs.cropi_loop", "--config", str(tmp_path / "nope.yaml")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "nope.yaml does not exist" in out.stderr


def test_argparse_errors_exit_2():
    with pytest.raises(SystemExit) as e:
        main(["train", "configs/tiny-cpu.yaml"])  # --phase is required
    assert e.value.code == 2
