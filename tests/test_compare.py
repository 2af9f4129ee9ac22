"""`cropi compare`: the statistics against slow obvious references, the arms, the drift policy's
trigger, and the report on run directories whose every figure is known by construction."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest

from cropi.compare import stats
from tests.conftest import TINY_CONFIG


# ---- stats ------------------------------------------------------------------------------------


def test_point_is_mean_over_seeds_of_mean_over_sets_of_mean_over_prompts():
    x = [[np.array([1.0, 0.0]), np.array([1.0])], [np.array([0.0, 0.0, 0.0]), np.array([0.5])]]
    assert stats.point(x) == pytest.approx(((0.5 + 1.0) / 2 + (0.0 + 0.5) / 2) / 2)


def test_bootstrap_of_constant_values_collapses_and_interval_brackets_the_estimate():
    const = [[np.full(10, 0.3)] for _ in range(3)]
    est, lo, hi = stats.bootstrap(const, n=200)
    assert est == lo == hi == pytest.approx(0.3)
    rng = np.random.default_rng(1)
    noisy = [[rng.random(50), rng.random(50)] for _ in range(4)]
    est, lo, hi = stats.bootstrap(noisy, n=500)
    assert lo < est < hi and hi - lo < 0.3


def test_bootstrap_width_matches_the_standard_error_of_a_mean_for_one_seed():
    # one seed, one set: the two-level bootstrap is the ordinary bootstrap of a mean,
    # whose 95% interval is about +-1.96 standard errors
    v = np.random.default_rng(0).random(400)
    _, lo, hi = stats.bootstrap([[v]], n=4000)
    se = stats.standard_error(v)
    assert (hi - lo) / 2 == pytest.approx(1.96 * se, rel=0.1)
    assert se == pytest.approx(np.std(v, ddof=1) / math.sqrt(len(v)))


def test_bootstrap_refuses_empty_measurements():
    for bad in ([], [[]], [[np.array([])]]):
        with pytest.raises(ValueError):
            stats.bootstrap(bad)


def test_speedup_is_the_papers_ratio_of_steps_to_the_full_arms_best():
    ref_x, ref_y = [0, 10, 20, 30, 40], [0.1, 0.2, 0.3, 0.35, 0.34]  # best 0.35 at step 30
    assert stats.speedup(ref_x, ref_y, [0, 10, 20], [0.1, 0.3, 0.36]) == pytest.approx(30 / 20)
    assert stats.speedup(ref_x, ref_y, [0, 10, 20], [0.1, 0.4, 0.2]) == pytest.approx(3.0)
    assert stats.speedup(ref_x, ref_y, [0, 10, 20], [0.1, 0.2, 0.3]) is None  # never reaches it
    assert stats.speedup(ref_x, ref_y, ref_x, ref_y) == pytest.approx(1.0)
    assert stats.speedup([0, 10], [0.5, 0.4], [0, 10], [0.5, 0.6]) is None  # full's best is the base model


# ---- arms and the drift trigger --------------------------------------------------------------


def test_arms_resolve_groups_and_refuse_unknown_names():
    from cropi.compare.arms import ABLATIONS, ARMS, MAIN, resolve
    from cropi.errors import CropiError
    from cropi.loop import METHODS

    assert [a.name for a in resolve(["main"])] == list(MAIN)
    assert [a.name for a in resolve(["cropi", "main"])][0] == "cropi"
    assert len(resolve(["main", "ablations"])) == len(MAIN) + len(ABLATIONS)
    assert all(a.method in METHODS for a in ARMS.values())
    with pytest.raises(CropiError, match="unknown arm 'bogus'"):
        resolve(["bogus"])


def test_every_arm_config_is_valid_and_differs_only_where_it_says(tmp_path):
    from cropi.compare.arms import ARMS
    from cropi.compare.run import arm_config
    from cropi.config import flat_dict

    base = flat_dict(arm_config(str(TINY_CONFIG), [], ARMS["full"], 0, tmp_path))
    for arm in ARMS.values():
        cfg = flat_dict(arm_config(str(TINY_CONFIG), [], arm, 3, tmp_path))
        changed = {k for k in cfg if cfg[k] != base[k]} - {"run.dir", "run.seed"}
        assert changed <= {o.split("=")[0] for o in arm.overrides}, (arm.name, changed)
        assert cfg["run.seed"] == 3 and cfg["run.dir"].endswith(f"seed-3/{arm.name}")


def test_drift_policy_triggers_once_per_phase_above_its_threshold(tiny_cfg):
    from cropi.config import load_config
    from cropi.loop import _drifted

    on = load_config(TINY_CONFIG, ["influence.kl_refresh_threshold=0.03"])
    assert _drifted(on, 1, {"kl_drift": 0.05})
    assert not _drifted(on, 1, {"kl_drift": 0.02})
    assert not _drifted(on, 1, {"kl_drift": 0.05, "rebuffered_at": [1]})  # already re-rolled for this phase
    assert _drifted(on, 2, {"kl_drift": 0.05, "rebuffered_at": [1]})
    assert not _drifted(tiny_cfg, 1, {"kl_drift": 9.0})  # 0: off


def test_live_train_shards_read_the_latest_reroll(tmp_path):
    from cropi.config import load_config
    from cropi.rollout.refresh import live_train_shards, rebuffer_dir, rebuffered_phases
    from cropi.store.files import write_json

    cfg = load_config(TINY_CONFIG, [f"run.dir={tmp_path}/run"])
    b = tmp_path / "run" / "buffer"
    (b / "train").mkdir(parents=True)
    for i in range(2):
        (b / "train" / f"shard-{i:05d}.parquet").write_bytes(b"")
    write_json({"complete": True, "splits": ["train"]}, b / "manifest.json")
    assert [p.parent for p in live_train_shards(cfg, 2)] == [b / "train"] * 2
    for m in (0, 1):
        write_json({"phase": m, "kl_before": 0.5, "prompts": 2, "shards": []}, rebuffer_dir(cfg, m) / "manifest.json")
    assert rebuffered_phases(cfg, 2) == [0, 1] and rebuffered_phases(cfg, 0) == [0]
    assert [p.parent for p in live_train_shards(cfg, 2)] == [rebuffer_dir(cfg, 1)] * 2
    assert [p.parent for p in live_train_shards(cfg, 0)] == [rebuffer_dir(cfg, 0)] * 2


# ---- the report on synthetic run directories -------------------------------------------------

# full gains 0.1 per phase; cropi 0.2 in phase 0 then 0.1; filtered nothing. Each step takes 10 s,
# an evaluation 5 s (excluded); cropi's influence 20 s per phase and the seed's buffer 30 s.
GAINS = {"full": (0.1, 0.2), "cropi": (0.2, 0.3), "filtered": (0.0, 0.0)}


def _write_arm(root, seed, arm, cfg_over, pool, val):
    from cropi.config import load_config
    from cropi.store.files import append_jsonl, write_json
    from cropi.store.selection import baseline_table, write_selection

    d = root / f"seed-{seed}" / arm
    cfg = load_config(TINY_CONFIG, [*cfg_over, f"run.seed={seed}", f"run.dir={d}"])
    method = {"full": "full", "cropi": "cropi", "filtered": "filtered"}[arm]
    write_json({"method": method, "config": cfg.to_dict()}, d / "run.json")
    stage = {"buffer": 30.0 if arm == "cropi" else 0.5} if arm != "full" else {}  # cropi built it
    base = {n: np.array([0.2, 0.4, 0.6, 0.8][: len(rows)] + [0.5] * (len(rows) - 4)) for n, rows in val.items()}
    ids = [r.prompt_id for r in pool]
    for m in range(2):
        if arm == "cropi":
            stage[f"phase{m}/influence"] = 20.0
        t = 1000.0 * m
        lines = [{"phase": m, "step": 0, "wall_time": t}]
        gain_start = 0.0 if m == 0 else GAINS[arm][0]
        for s in (1, 2):
            t += 10.0 + (5.0 if s == 2 else 0.0)
            lines.append({"phase": m, "step": s, "wall_time": t, "rollout_prompts": 4, "trained_prompts": 4,
                          "zero_adv_prompts": 1, "rollout_zero_adv_prompts": 1,
                          **({"eval_seconds": 5.0} if s == 2 else {})})
        for x in lines:
            append_jsonl(x, d / f"phase-{m}" / "train_metrics.jsonl")
        for s, g in ((0, gain_start), (2, GAINS[arm][m])):
            e = {"phase": m, "step": s, "samples": 8,
                 "sets": {n: {"prompt_ids": [r.prompt_id for r in rows][::-1],  # order must not matter
                              "pass_rate": list((base[n] + g)[::-1])} for n, rows in val.items()}}
            if m > 0 and s == 0:
                e["copied_from"] = {"phase": m - 1, "step": 2}
            append_jsonl(e, d / f"phase-{m}" / "eval.jsonl")
        sel = [i in ids[:4] for i in ids] if arm != "full" else [True] * len(ids)
        write_selection(baseline_table(ids, sel), d / f"phase-{m}" / "selection.parquet")
        if arm == "cropi":
            write_json({"mode": "exact", "sets": list(val), "num_train_shards": 1, "kl_drift": 0.01 * (m + 1)},
                       d / f"phase-{m}" / "influence" / "manifest.json")
    write_json({"method": method, "run_dir": str(d), "stage_seconds": stage, "final_checkpoint": str(d)},
               d / "run_result.json")


def summarise_runs(root, seed, arm):
    from cropi.compare.reading import read_arm

    return read_arm(root / f"seed-{seed}" / arm, arm, seed, 0.0)


@pytest.fixture
def compare_root(tmp_path):
    from cropi.config import load_config
    from cropi.data.suite import load_data
    from cropi.store.files import write_json, write_table

    over = [f"data.data_dir={tmp_path}/tasks", "data.train_size=20", "data.val_size=6",
            "data.families=[add, sub, mul]", "data.targeted=[add, sub]", "trainer.steps_per_phase=2",
            "run.num_phases=2", "trainer.eval_every=2", "trainer.prompts_per_step=4"]
    root = tmp_path / "cmp"
    for seed in (0, 1):
        pool, val = load_data(load_config(TINY_CONFIG, [*over, f"run.seed={seed}"]))
        for arm in GAINS:
            _write_arm(root, seed, arm, over, pool, val)
        # the seed's buffer: prompts 0 and 2 of the pool have all-equal rewards
        ids = [r.prompt_id for r in pool]
        std = [0.0 if j in (0, 2) else 0.5 for j in range(len(ids))]
        write_table(pa.table({"prompt_id": ids, "reward": [0.5] * len(ids), "group_std": std}),
                    root / f"seed-{seed}" / "buffer" / "train" / "shard-00000.parquet")
        write_json({"complete": True}, root / f"seed-{seed}" / "buffer" / "manifest.json")
    write_json({"config": "x.yaml", "overrides": [], "arms": list(GAINS), "seeds": [0, 1]}, root / "compare.json")
    return root


def test_report_figures_equal_the_constructed_ones(compare_root, tmp_path):
    from cropi.compare.report import write_compare_report
    from cropi.compare.summary import summarise

    s = summarise(compare_root)
    assert s["targeted"] == ["add", "sub"] and s["untargeted"] == ["mul"] and s["steps"] == 4
    for arm, (g0, g1) in GAINS.items():
        a = s["arms"][arm]
        for g in ("targeted", "untargeted"):
            assert a["gain"][g]["mean"] == pytest.approx(g1) and a["gain"][g]["low"] == pytest.approx(g1)
        assert a["per_set"]["add"]["standard_error"] == pytest.approx(np.std([0.2, 0.4, 0.6, 0.8, 0.5, 0.5], ddof=1)
                                                                      / math.sqrt(6), abs=1e-4)
        assert a["training"]["zero_adv_share_trained"] == [0.25, 0.25]
    # wall: full 2 x 20 s of steps; cropi adds 2 x 20 s influence and the 30 s buffer; filtered the buffer
    assert s["arms"]["full"]["wall"]["total_s"]["mean"] == pytest.approx(40.0)
    assert s["arms"]["cropi"]["wall"]["total_s"]["mean"] == pytest.approx(110.0)
    assert s["arms"]["filtered"]["wall"]["buffer_s"]["per_seed"] == [30.0, 30.0]
    # speed-up: full's best (gain 0.2) at step 4, 40 s; cropi reaches it at step 2, at 30 + 20 + 20 = 70 s
    sp = s["arms"]["cropi"]["speedup_vs_full"]["targeted"]
    assert sp["steps_per_seed"] == [2.0, 2.0] and sp["wall_per_seed"][0] == pytest.approx(40 / 70, abs=1e-3)
    assert s["arms"]["filtered"]["speedup_vs_full"]["targeted"]["steps_mean"] is None  # never reaches it
    from cropi.compare.summary import _per_seed_speedup

    flat = GAINS["filtered"]  # a reference that never improves: the ratio is undefined, not "never"
    assert flat == (0.0, 0.0)
    assert _per_seed_speedup(summarise_runs(compare_root, 0, "filtered"), summarise_runs(compare_root, 0, "cropi"),
                             ["add"]) == ("n/a", "n/a")
    v = s["versus"]["cropi - full"]["targeted"]
    assert v["mean"] == pytest.approx(0.1) and v["low"] > 0
    assert s["versus"]["cropi - filtered"]["untargeted"]["mean"] == pytest.approx(0.3)
    # selections: the first four pool prompts, two of which have all-equal buffered rewards
    assert s["arms"]["cropi"]["zero_variance_selected"] == [[0.5, 0.5], [0.5, 0.5]]
    assert s["arms"]["full"]["zero_variance_selected"] == [[0.1, 0.1], [0.1, 0.1]]
    assert sum(s["arms"]["full"]["composition"].values()) == pytest.approx(1.0)
    assert s["arms"]["cropi"]["kl_drift"][0] == [{"phase": 0, "kl": 0.01, "kl_before_rebuffer": None},
                                                 {"phase": 1, "kl": 0.02, "kl_before_rebuffer": None}]
    md = write_compare_report(compare_root, tmp_path / "out", command="cropi compare x.yaml")
    text = md.read_text()
    assert "**cropi** vs **full** on the targeted sets: better" in text
    assert (tmp_path / "out" / "curves_steps.png").stat().st_size > 10_000
    assert (tmp_path / "out" / "curves_wall.png").is_file()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["command"] == "cropi compare x.yaml"


def test_report_refuses_a_directory_that_is_not_a_comparison(tmp_path):
    from cropi.compare.summary import summarise
    from cropi.errors import CropiError

    with pytest.raises(CropiError, match="no compare.json"):
        summarise(tmp_path)
