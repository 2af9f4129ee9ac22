"""The baselines select what they claim: `full` every prompt, `random` as many prompts as CROPI."""

import pyarrow.parquet as pq
import numpy as np

from cropi.config import load_config
from cropi.data.dataset import PromptRow
from cropi.selection.fusion import select_from_scores


def _pool(n):
    return [PromptRow(i, "arith_add", [{"role": "user", "content": f"{i}+1="}], str(i + 1), {"family": "add"})
            for i in range(n)]


def _baseline(tmp_path, method, alpha, n, phase=0):
    from cropi.loop import _write_baseline_selection

    cfg = load_config("configs/tiny-cpu.yaml", [f"run.dir={tmp_path / method}", f"selection.alpha={alpha}"])
    _write_baseline_selection(cfg, phase, _pool(n), method)
    t = pq.read_table(tmp_path / method / f"phase-{phase}" / "selection.parquet").to_pylist()
    assert [r["prompt_id"] for r in t] == list(range(n))
    return {r["prompt_id"] for r in t if r["selected"]}


def test_random_baseline_selects_as_many_prompts_as_cropi(tmp_path):
    # alpha 0.07 of 100 prompts: CROPI takes 7 (alpha read as the decimal it was written as);
    # ceil(0.07 * 100) in floating point is ceil(7.000000000000001) = 8
    n, alpha = 100, 0.07
    scores = np.random.default_rng(0).standard_normal((n, 2))
    cropi = select_from_scores(scores, np.ones(n, bool), np.arange(n), alpha, "rrf", 60.0)
    picked = _baseline(tmp_path, "random", alpha, n)
    assert len(picked) == int(cropi["selected"].sum()) == 7
    assert len(_baseline(tmp_path, "full", alpha, n)) == n


def test_random_baseline_is_seeded_per_phase(tmp_path):
    a = _baseline(tmp_path / "a", "random", 0.1, 200, phase=0)
    b = _baseline(tmp_path / "b", "random", 0.1, 200, phase=0)
    c = _baseline(tmp_path / "c", "random", 0.1, 200, phase=1)
    assert a == b and a != c and len(a) == len(c) == 20
