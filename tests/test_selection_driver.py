"""The streaming selector on fake influence directories: streamed == in-memory, exact == projected,
targeted selection, summary, plot, and bad inputs that fail clearly and write nothing."""

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cropi.config import SelectionConfig
from cropi.data.dataset import PromptRow
from cropi.errors import ConfigError, CropiError
from cropi.selection import run_selection
from cropi.selection.fusion import select_from_scores
from cropi.selection.scoring import projected_scores, val_target
from tests.support import fake_influence as fake

FAMS = ["add", "sub", "mul", "mod"]
N, K, SHARD = 203, 64, 50  # 5 shards, the last one of 3 rows


def _prompts(n=N):
    return [PromptRow(i, f"arith_{FAMS[i % 4]}", [{"role": "user", "content": "1+1="}], "2",
                      {"family": FAMS[i % 4]}) for i in range(n)]


def _pool(seed=0, n=N, k=K, val_sets=("mul", "mod"), val_size=150):
    """Family-aligned gradients: every 10th prompt has a zero gradient; shards hold the prompts
    in a shuffled order so that shard order != prompt_id order."""
    rng = np.random.default_rng(seed)
    labels = [FAMS[i % 4] for i in range(n)]
    dirs = fake.family_directions(FAMS, k, seed)
    grads = fake.aligned_gradients(labels, dirs, rng)  # [n, k]
    zero = np.arange(n) % 10 == 0
    grads[zero] = 0
    perm = rng.permutation(n)
    val = {s: (np.arange(val_size), np.zeros(val_size, bool), fake.aligned_gradients([s] * val_size, dirs, rng))
           for s in val_sets}
    return perm, grads[perm], zero[perm], val


@pytest.fixture
def projected(tmp_path):
    perm, grads, zero, val = _pool()
    fake.write_projected(tmp_path / "influence", perm, zero, grads, val, SHARD, dtype="float16")
    return tmp_path / "influence"


def _in_memory(influence, cfg, seed):
    """The reference: every shard loaded at once, then the pure functions on the whole pool."""
    t = pa.concat_tables([pq.read_table(p) for p in sorted((influence / "train").glob("shard-*.parquet"))])
    ids = t.column("prompt_id").to_numpy()
    order = np.argsort(ids)
    g = np.stack(t.column("grad").to_numpy(zero_copy_only=False))[order]  # [N, k] fp16
    zero = t.column("zero_grad").to_numpy(zero_copy_only=False)[order]
    manifest = json.loads((influence / "manifest.json").read_text())
    targets = []
    for s in manifest["sets"]:
        v = pq.read_table(influence / "val" / s / "shard-00000.parquet")
        vo = np.argsort(v.column("prompt_id").to_numpy())
        vg = np.stack(v.column("grad").to_numpy(zero_copy_only=False))[vo]
        targets.append(val_target(v.column("prompt_id").to_numpy()[vo], vg,
                                  v.column("zero_grad").to_numpy(zero_copy_only=False)[vo], cfg.max_val_grads, seed, s)[0])
    scores, eligible = projected_scores(g, zero, np.stack(targets))
    return ids[order], scores, eligible, select_from_scores(scores, eligible, ids[order], cfg.alpha, cfg.fusion, cfg.k_rrf)


@pytest.mark.parametrize("fusion", ["rrf", "topn", "max"])
def test_streamed_equals_in_memory(projected, tmp_path, fusion):
    cfg = SelectionConfig(alpha=0.1, fusion=fusion)
    run_selection(projected, _prompts(), cfg, 7, tmp_path / "a", batch_rows=7)
    run_selection(projected, _prompts(), cfg, 7, tmp_path / "b")  # default batch: a shard at a time
    a, b = pq.read_table(tmp_path / "a" / "selection.parquet"), pq.read_table(tmp_path / "b" / "selection.parquet")
    assert a.equals(b)
    ids, scores, eligible, ref = _in_memory(projected, cfg, 7)
    assert a.column("prompt_id").to_numpy().tolist() == ids.tolist() == list(range(N))
    np.testing.assert_array_equal(np.stack([a.column("score__mul"), a.column("score__mod")], axis=1), scores)
    np.testing.assert_array_equal(np.stack([a.column("rank__mul"), a.column("rank__mod")], axis=1), ref["ranks"])
    np.testing.assert_array_equal(a.column("fused").to_numpy(), ref["fused"])
    assert a.column("selected").to_numpy().tolist() == ref["selected"].tolist()
    assert a.column("zero_grad").to_numpy().tolist() == (~eligible).tolist()
    assert int(ref["selected"].sum()) == math.ceil(0.1 * N) == 21


def test_exact_mode_agrees_with_projected(projected, tmp_path):
    """Exact-mode shards carrying <g, v_j> and ||g|| computed from the same gradients and targets
    must select exactly what projected mode selects."""
    cfg = SelectionConfig(alpha=0.15)
    ids, _, _, ref = _in_memory(projected, cfg, 3)
    t = pa.concat_tables([pq.read_table(p) for p in sorted((projected / "train").glob("*.parquet"))])
    g = np.stack(t.column("grad").to_numpy(zero_copy_only=False)).astype(np.float64)  # [N, k]
    targets = {}
    for s in ("mul", "mod"):
        v = pq.read_table(projected / "val" / s / "shard-00000.parquet")
        vt, used = val_target(v.column("prompt_id").to_numpy(), np.stack(v.column("grad").to_numpy(zero_copy_only=False)),
                              v.column("zero_grad").to_numpy(zero_copy_only=False), 100, 3, s)
        targets[s] = (vt, used)
    dots = np.stack([g @ targets[s][0] for s in targets], axis=1)  # [N, S]
    fake.write_exact(tmp_path / "exact", t.column("prompt_id").to_numpy(), t.column("zero_grad").to_numpy(),
                     np.linalg.norm(g, axis=1), dots,
                     {s: {"norm": float(np.linalg.norm(v)), "num_prompts": 150} for s, (v, _) in targets.items()}, 64)
    summary = run_selection(tmp_path / "exact", _prompts(), cfg, 3, tmp_path / "out")
    sel = pq.read_table(tmp_path / "out" / "selection.parquet")
    assert summary["mode"] == "exact" and summary["selected"] == math.ceil(0.15 * N)
    assert sel.column("selected").to_numpy().tolist() == ref["selected"].tolist()


def test_targeted_selection_picks_the_aligned_family(tmp_path):
    # One validation set drawn from 'mul': cos ~ 1/sqrt(2) = 0.71 for mul prompts, ~0 +- 0.13 for others.
    perm, grads, zero, val = _pool(seed=1, n=400, k=256, val_sets=("mul",))
    fake.write_projected(tmp_path / "inf", perm, zero, grads, val, 64)
    s = run_selection(tmp_path / "inf", _prompts(400), SelectionConfig(alpha=0.2), 0, tmp_path / "out")
    fam = s["composition"]["family"]
    # 80 selected; mul (ids = 2 mod 4) has 100 prompts, 20 with a zero gradient (ids = 10 mod 20):
    # exactly its 80 eligible prompts are selected, and nothing from the other families
    assert s["selected"] == 80 and fam["mul"]["selected"] == 80 and fam["mul"]["zero_grad"] == 20
    assert s["scores"]["mul"]["selected_min"] > s["scores"]["mul"]["p50"] + 0.3

    # Two sets, RRF: the selection splits between the two aligned families, nothing else.
    perm, grads, zero, val = _pool(seed=2, n=400, k=256, val_sets=("mul", "mod"))
    fake.write_projected(tmp_path / "inf2", perm, zero, grads, val, 64)
    s = run_selection(tmp_path / "inf2", _prompts(400), SelectionConfig(alpha=0.2), 0, tmp_path / "out2")
    fam = s["composition"]["family"]
    assert fam["mul"]["selected"] + fam["mod"]["selected"] == 80
    assert min(fam["mul"]["selected"], fam["mod"]["selected"]) >= 30
    t = pq.read_table(tmp_path / "out2" / "selection.parquet")
    assert not (t.column("selected").to_numpy() & t.column("zero_grad").to_numpy()).any()


def test_summary_counts_and_jaccard_with_previous(projected, tmp_path):
    s1 = run_selection(projected, _prompts(), SelectionConfig(alpha=0.1), 0, tmp_path / "p0")
    assert (s1["pool_size"], s1["zero_grad"], s1["eligible"], s1["n_select"], s1["selected"]) == (203, 21, 182, 21, 21)
    assert s1["previous"] is None
    used = s1["validation"]["mul"].pop("prompt_ids")
    assert len(used) == 100 and used == sorted(set(used)) and max(used) < 150
    assert s1["validation"]["mul"] == {"num_prompts": 150, "num_used": 100, "target_norm": pytest.approx(
        s1["validation"]["mul"]["target_norm"])}
    fam = s1["composition"]["family"]
    assert sum(f["pool"] for f in fam.values()) == 203 and sum(f["selected"] for f in fam.values()) == 21
    assert fam["add"]["pool"] == 51 and fam["add"]["pool_frac"] == pytest.approx(51 / 203)
    assert s1["composition"]["data_source"]["arith_mul"]["selected"] == fam["mul"]["selected"]
    assert json.loads((tmp_path / "p0" / "selection_summary.json").read_text())["selected"] == 21

    same = run_selection(projected, _prompts(), SelectionConfig(alpha=0.1), 0, tmp_path / "p1", tmp_path / "p0")
    assert same["previous"]["jaccard"] == 1.0
    wider = run_selection(projected, _prompts(), SelectionConfig(alpha=0.3, fusion="max"), 0, tmp_path / "p2",
                          tmp_path / "p0" / "selection.parquet")
    a = set(np.flatnonzero(pq.read_table(tmp_path / "p0" / "selection.parquet").column("selected").to_numpy()))
    b = set(np.flatnonzero(pq.read_table(tmp_path / "p2" / "selection.parquet").column("selected").to_numpy()))
    assert wider["previous"]["jaccard"] == pytest.approx(len(a & b) / len(a | b))
    assert wider["previous"]["intersection"] == len(a & b) and wider["selected"] == 61  # ceil(0.3 * 203) = 61


def test_plot_writes_a_png(projected, tmp_path):
    from matplotlib.image import imread

    from cropi.selection.plot import plot_selection

    s0 = run_selection(projected, _prompts(), SelectionConfig(), 0, tmp_path / "phase-0")
    s1 = run_selection(projected, _prompts(), SelectionConfig(fusion="max"), 0, tmp_path / "phase-1")
    png = plot_selection(tmp_path / "phase-1", [s0, s1], tmp_path / "sel.png", labels=["phase-0", "phase-1"])
    img = imread(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and img.shape[0] >= 600 and img.shape[1] >= 800


# ---- bad inputs: a clear error naming the culprit, and no output at all ----

def _no_output(out):
    return not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("alpha", [0.0, 1.5, -1.0])
def test_bad_alpha(projected, tmp_path, alpha):
    with pytest.raises(ConfigError, match=r"selection\.alpha"):
        run_selection(projected, _prompts(), SelectionConfig(alpha=alpha), 0, tmp_path / "out")
    assert _no_output(tmp_path / "out")


def test_empty_validation_set(projected, tmp_path):
    fake.write_val_set(projected, "mod", [], [], np.zeros((0, K)))
    with pytest.raises(CropiError, match="validation set 'mod' is empty"):
        run_selection(projected, _prompts(), SelectionConfig(), 0, tmp_path / "out")
    for f in (projected / "val" / "mod").iterdir():
        f.unlink()
    with pytest.raises(CropiError, match="validation set 'mod' is empty: no shard"):
        run_selection(projected, _prompts(), SelectionConfig(), 0, tmp_path / "out")
    assert _no_output(tmp_path / "out")


def test_all_zero_validation_set(projected, tmp_path):
    fake.write_val_set(projected, "mul", np.arange(5), np.ones(5, bool), np.ones((5, K)))
    with pytest.raises(CropiError, match="validation set 'mul': every one of its 5 prompts has a zero gradient"):
        run_selection(projected, _prompts(), SelectionConfig(), 0, tmp_path / "out")
    assert _no_output(tmp_path / "out")


def test_exact_mode_empty_set(tmp_path):
    fake.write_exact(tmp_path / "inf", np.arange(N), np.zeros(N, bool), np.ones(N), np.ones((N, 2)),
                     {"a": {"norm": 1.0, "num_prompts": 10}, "b": {"norm": 1.0, "num_prompts": 0}}, 64)
    with pytest.raises(CropiError, match="validation set 'b' is empty"):
        run_selection(tmp_path / "inf", _prompts(), SelectionConfig(), 0, tmp_path / "out")
    assert _no_output(tmp_path / "out")


def test_missing_shard(projected, tmp_path):
    (projected / "train" / "shard-00002.parquet").unlink()
    with pytest.raises(CropiError, match=r"training shard \S*train/shard-00002\.parquet listed by .* does not exist"):
        run_selection(projected, _prompts(), SelectionConfig(), 0, tmp_path / "out")
    assert _no_output(tmp_path / "out")


def test_unlisted_shard(projected, tmp_path):
    (projected / "train" / "shard-00009.parquet").write_bytes(b"")
    with pytest.raises(CropiError, match=r"shard-00009\.parquet is not listed"):
        run_selection(projected, _prompts(), SelectionConfig(), 0, tmp_path / "out")


def _rewrite_ids(influence, shard, fn):
    p = influence / "train" / f"shard-{shard:05d}.parquet"
    t = pq.read_table(p)
    ids = fn(t.column("prompt_id").to_numpy().copy())
    pq.write_table(t.set_column(0, "prompt_id", pa.array(ids, pa.int64())), p)
    return ids


def test_duplicate_prompt_id_across_shards(projected, tmp_path):
    first = pq.read_table(projected / "train" / "shard-00000.parquet").column("prompt_id")[0].as_py()

    def dup(ids):
        lost = ids[4]
        ids[4] = first
        dup.lost = int(lost)
        return ids
    _rewrite_ids(projected, 3, dup)
    with pytest.raises(CropiError) as e:
        run_selection(projected, _prompts(), SelectionConfig(), 0, tmp_path / "out", batch_rows=16)
    msg = str(e.value)
    assert f"1 rows repeat a prompt id, e.g. {first} (shard-00000.parquet and shard-00003.parquet)" in msg
    assert f"1 pool prompts have no row, e.g. prompt_id {dup.lost}" in msg
    assert _no_output(tmp_path / "out")


def test_duplicate_within_a_shard_and_unknown_id(projected, tmp_path):
    def bad(ids):
        ids[1] = ids[0]
        ids[2] = 10_000
        return ids
    ids = _rewrite_ids(projected, 1, bad)
    with pytest.raises(CropiError, match=rf"repeat a prompt id, e.g. {ids[0]} \(shard-00001.parquet and "
                                         rf"shard-00001.parquet\).*") as e:
        run_selection(projected, _prompts(), SelectionConfig(), 0, tmp_path / "out")
    assert "1 prompt ids are not in the pool, e.g. 10000 (shard-00001.parquet)" in str(e.value)
    assert "2 pool prompts have no row" in str(e.value)


def test_pool_and_shards_disagree(projected, tmp_path):
    with pytest.raises(CropiError, match="3 prompt ids are not in the pool"):
        run_selection(projected, _prompts(200), SelectionConfig(), 0, tmp_path / "out")
    with pytest.raises(CropiError, match="training pool lists prompt_id 5 more than once"):
        run_selection(projected, _prompts() + _prompts()[5:6], SelectionConfig(), 0, tmp_path / "out")
    assert _no_output(tmp_path / "out")


@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_non_finite_gradient_names_shard(tmp_path, value):
    g = np.ones((10, 4), np.float32)
    g[3, 1] = value  # a NaN gradient must not pass for a zero one
    fake.write_projected(tmp_path / "inf", np.arange(10), np.zeros(10, bool), g,
                         {"a": (np.arange(2), np.zeros(2, bool), np.ones((2, 4)))}, 5, dtype="float32")
    with pytest.raises(CropiError, match=r"shard-00000\.parquet: prompt_id 3 has a non-finite gradient"):
        run_selection(tmp_path / "inf", _prompts(10), SelectionConfig(), 0, tmp_path / "out")


def test_failed_run_leaves_the_previous_output_intact(projected, tmp_path):
    out = tmp_path / "out"
    run_selection(projected, _prompts(), SelectionConfig(), 0, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (projected / "train" / "shard-00004.parquet").unlink()
    with pytest.raises(CropiError):
        run_selection(projected, _prompts(), SelectionConfig(alpha=0.5), 0, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp files, nothing half-written


def test_all_zero_gradient_pool(tmp_path):
    fake.write_projected(tmp_path / "inf", np.arange(10), np.ones(10, bool), np.zeros((10, 4)),
                         {"a": (np.arange(2), np.zeros(2, bool), np.ones((2, 4)))}, 5)
    with pytest.raises(CropiError, match="every one of the 10 training prompts has a zero gradient"):
        run_selection(tmp_path / "inf", _prompts(10), SelectionConfig(), 0, tmp_path / "out")
    assert _no_output(tmp_path / "out")


def test_wrong_columns_name_file_and_column(projected, tmp_path):
    fake.write_exact(tmp_path / "ex", np.arange(N), np.zeros(N, bool), np.ones(N), np.ones((N, 1)),
                     {"a": {"norm": 1.0, "num_prompts": 3}}, 64)
    manifest = json.loads((tmp_path / "ex" / "manifest.json").read_text())
    (tmp_path / "ex" / "manifest.json").write_text(json.dumps({**manifest, "sets": ["a", "b"]}))
    (tmp_path / "ex" / "val_targets.json").write_text(json.dumps({s: {"norm": 1.0, "num_prompts": 3} for s in "ab"}))
    with pytest.raises(CropiError, match=r"shard-00000\.parquet: missing column 'dot__b'"):
        run_selection(tmp_path / "ex", _prompts(), SelectionConfig(), 0, tmp_path / "out")
    manifest = json.loads((projected / "manifest.json").read_text())
    (projected / "manifest.json").write_text(json.dumps({**manifest, "proj_dim": 32}))
    with pytest.raises(CropiError, match=r"val/mul/shard-00000\.parquet: column 'grad' has width 64, manifest proj_dim is 32"):
        run_selection(projected, _prompts(), SelectionConfig(), 0, tmp_path / "out")
    assert _no_output(tmp_path / "out")
