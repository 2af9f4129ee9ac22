"""scripts/gpu-smoke's summary, checked on a real `cropi run` on CPU: it reads what the run wrote,
not the run's stdout (which carries the step log and the actors' prints)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import smoke_summary  # noqa: E402


def test_peak_memory_names_each_process_by_its_actor_class():
    lines = ["101 900 ray::TrainerRank.train_step", "101 1500 ray::TrainerRank.train_step", "102 700 ray::RolloutEngine",
             "103 300 ray::IDLE", "104 [N/A] ray::GradientActor", "105 4000 python -m cropi.cli run"]
    assert smoke_summary.peak_memory(lines) == {"TrainerRank": 1500.0, "RolloutEngine": 700.0, "IDLE": 300.0,
                                                "other": 4000.0}


@pytest.mark.integration
def test_summary_of_a_real_run_reads_its_files(tiny_model, tmp_path):
    run = tmp_path / "run"
    sets = [f"run.dir={run}", f"model.path={tiny_model}", f"data.data_dir={tmp_path / 'tasks'}", "data.train_size=64",
            "data.val_size=8", "rollout.k_val=4", "rollout.shard_size=64", "run.num_phases=1",
            "trainer.steps_per_phase=2", "trainer.prompts_per_step=4", "trainer.group_size=4", "trainer.eval_every=2",
            "trainer.eval_samples=2", "selection.alpha=0.25", "selection.max_val_grads=3", "trainer.world_size=1",
            "resources.influence.num_actors=1"]
    cmd = [sys.executable, "-m", "cropi.cli", "run", "configs/tiny-cpu.yaml", *[a for s in sets for a in ("--set", s)]]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with pytest.raises(json.JSONDecodeError):
        json.loads(proc.stdout)  # what the old smoke script did: the step log lines come first
    plan = tmp_path / "plan.json"
    subprocess.run([sys.executable, "-m", "cropi.cli", "plan", "configs/tiny-cpu.yaml", "--json",
                    *[a for s in sets for a in ("--set", s)]], cwd=ROOT, check=True, stdout=plan.open("w"))
    out = subprocess.run([sys.executable, "scripts/smoke_summary.py", "--run", f"cpu={run}:{plan}", "--wall", "1"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert len(out.strip().splitlines()) == 1
    s = json.loads(out)["runs"]["cpu"]
    assert s["steps"] == 2 and {"buffer", "phase0/influence", "phase0/train"} <= set(s["stage_seconds"])
    assert s["sync_seconds_mean"] > 0 and s["sync"] == "broadcast" and s["influence"] == {"phase-0": "exact"}
    # the engine samples with the weights the trainer holds: after every sync their log-probs agree
    assert 0 <= s["engine_logprob_gap_mean"] < 1e-4 and s["engine_logprob_gap_max"] < 1e-3
    assert s["peak_gpu_mib_vs_plan_gib"]["TrainerRank"]["plan_gib"] > 0
    # verl's metric names beside cropi's, in every step line and at evaluations
    lines = [json.loads(x) for x in (run / "phase-0" / "train_metrics.jsonl").read_text().splitlines()]
    step = lines[-1]
    assert step["critic/score/mean"] == step["reward_mean"] and 0 <= step["response_length/clip_ratio"] <= 1
    assert step["response_length/max"] <= 8 and step["val-core/add/reward/mean@2"] == step["val_pass@1/add"]
    assert step["lr"] == pytest.approx(1e-4) and step["optimizer_steps"] == 1
