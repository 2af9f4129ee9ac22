"""A rerun of a finished run with a changed config is refused, naming the field, and damages
nothing; a rerun that changes only resources resumes; run.json keeps every start."""

import json

import pytest

from cropi.config import load_config
from cropi.errors import CropiError

pytestmark = pytest.mark.integration


@pytest.mark.slow  # 70 s of a real run: `make test-all`; CI keeps test_store.py::test_a_begun_phase_refuses_a_changed_config_and_names_the_fields
def test_rerun_with_a_changed_selection_is_refused_not_silently_kept(tiny_model, tmp_path):
    from cropi.loop import run_loop

    base = [f"run.dir={tmp_path / 'run'}", f"data.data_dir={tmp_path / 'tasks'}", "data.train_size=64",
            "data.val_size=4", "run.num_phases=1", "trainer.steps_per_phase=1", "trainer.group_size=2",
            "trainer.eval_samples=1", "selection.alpha=0.25"]
    run_loop(load_config("configs/tiny-cpu.yaml", base), "random", log=lambda *_: None)
    phase0 = tmp_path / "run" / "phase-0"
    before = {p.name: p.read_bytes() for p in (phase0 / "selection.parquet", tmp_path / "run" / "run.json")}
    with pytest.raises(CropiError, match=r"phase 0 .*changed: selection\.alpha: 0\.25 -> 0\.5"):
        run_loop(load_config("configs/tiny-cpu.yaml", base + ["selection.alpha=0.5"]), "random", log=lambda *_: None)
    after = {p.name: p.read_bytes() for p in (phase0 / "selection.parquet", tmp_path / "run" / "run.json")}
    assert after == before  # the old selection and the run record are untouched
    logs = []
    run_loop(load_config("configs/tiny-cpu.yaml", base + ["resources.rollout.num_cpus=0.5"]), "random", log=logs.append)
    assert "phase 0: complete, skipped" in logs
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert [h["config"]["resources"]["rollout"]["num_cpus"] for h in run["history"]] == [1.0, 0.5]
    assert json.loads((phase0 / "phase.json").read_text())["inputs"]["selection.alpha"] == 0.25
