"""The run directory's files: atomic writes, the JSON/JSONL readers, the selection file, and the
per-phase record that refuses a resume with a changed config."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cropi.config import load_config
from cropi.errors import CropiError
from cropi import hashing
from cropi.store import files
from cropi.store.paths import RunPaths
from cropi.store.selection import baseline_table, read_selection, selected_ids, write_selection


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    p = tmp_path / "a" / "x.json"
    files.write_json({"v": 1}, p)

    def boom(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        files.atomic_write(p, boom)
    assert json.loads(p.read_text()) == {"v": 1}
    assert [q.name for q in p.parent.iterdir()] == ["x.json"]  # no temporary left behind
    with pytest.raises(ValueError):  # NaN is refused before anything is written
        files.write_json({"v": float("nan")}, p)
    assert json.loads(p.read_text()) == {"v": 1}


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    out = tmp_path / "ckpt"
    with files.atomic_dir(out) as d:
        (d / "a.txt").write_text("1")
    with pytest.raises(RuntimeError):
        with files.atomic_dir(out) as d:
            (d / "b.txt").write_text("2")
            raise RuntimeError("killed")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_read_jsonl_skips_a_torn_last_line_and_names_a_bad_one(tmp_path):
    p = tmp_path / "m.jsonl"
    assert files.read_jsonl(p) == []
    p.write_text('{"step": 0}\n{"step": 1}\n{"ste')
    assert files.read_jsonl(p) == [{"step": 0}, {"step": 1}]
    p.write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(CropiError, match=r"m\.jsonl row 1 \(line 2\): invalid JSON"):
        files.read_jsonl(p)
    with pytest.raises(CropiError, match="does not exist"):
        files.read_json(tmp_path / "none.json", "run record")


def test_stable_hash_ignores_key_order():
    assert hashing.stable_hash({"a": 1, "b": [1, 2]}) == hashing.stable_hash({"b": [1, 2], "a": 1})
    assert hashing.stable_hash({"a": 1}) != hashing.stable_hash({"a": 2})


def test_selection_file_is_checked_and_its_summary_never_stale(tmp_path):
    path = tmp_path / "selection.parquet"
    summary = {"mode": "exact", "pool_size": 3, "selected": 2}
    write_selection(baseline_table([3, 1, 2], [True, False, True]), path, summary)
    assert selected_ids(path) == [3, 2] and selected_ids(tmp_path) == [3, 2]
    assert json.loads((tmp_path / "selection_summary.json").read_text()) == {"schema_version": 1, **summary}
    write_selection(baseline_table([1], [True]), path)  # a new table without summary drops the old one
    assert not (tmp_path / "selection_summary.json").exists()
    with pytest.raises(ValueError):  # a summary that cannot be encoded fails before any write
        write_selection(baseline_table([1], [False]), path, {**summary, "x": float("nan")})
    assert selected_ids(path) == [1]  # the failed write left the previous selection whole
    pq.write_table(pa.table({"prompt_id": [1, 2]}), tmp_path / "bad.parquet")
    with pytest.raises(CropiError, match="bad.parquet has no selected column"):
        read_selection(tmp_path / "bad.parquet")
    pq.write_table(pa.table({"prompt_id": [1, 1], "selected": [True, False]}), tmp_path / "dup.parquet")
    with pytest.raises(CropiError, match="more than once"):
        read_selection(tmp_path / "dup.parquet")
    with pytest.raises(CropiError, match="does not exist"):
        read_selection(tmp_path / "nope.parquet")


def _cfg(tmp_path, *sets):
    return load_config("configs/tiny-cpu.yaml", [f"run.dir={tmp_path / 'run'}", *sets])


def test_a_begun_phase_refuses_a_changed_config_and_names_the_fields(tmp_path):
    from cropi.store.run_record import check_phase, claim_phase, check_run, record_start

    cfg = _cfg(tmp_path)
    paths = RunPaths.of(cfg)
    claim_phase(cfg, 0, "cropi")
    (paths.phase(0) / "influence").mkdir()  # the phase has begun
    changed = _cfg(tmp_path, "selection.alpha=0.2", "trainer.lr=0.5")
    with pytest.raises(CropiError, match=r"phase 0 .* changed: selection\.alpha: 0\.1 -> 0\.2; trainer\.lr: 0\.0001 -> 0\.5"):
        check_run(changed, "cropi")
    with pytest.raises(CropiError, match="changed: method: 'cropi' -> 'random'"):
        check_phase(cfg, 0, "random")
    # resources, the phase count and the run directory's name are not inputs of a phase
    check_run(_cfg(tmp_path, "resources.influence.num_actors=1", "resources.rollout.num_cpus=2",
                   "run.num_phases=5"), "cropi")
    # a phase that has not begun takes (and records) the new config
    claim_phase(changed, 1, "cropi")
    assert json.loads(paths.phase_record(1).read_text())["inputs"]["selection.alpha"] == 0.2
    # run.json keeps every start
    record_start(cfg, "cropi")
    record_start(_cfg(tmp_path, "resources.influence.num_actors=1"), "cropi")
    run = json.loads(paths.run_json.read_text())
    assert len(run["history"]) == 2 and run["history"][1]["config"]["resources"]["influence"]["num_actors"] == 1
    with pytest.raises(CropiError, match="holds a 'cropi' run"):
        check_run(cfg, "full")


def test_run_paths_list_phases_in_numeric_order(tmp_path):
    for m in (10, 2, 0):
        (tmp_path / f"phase-{m}").mkdir()
    (tmp_path / "phase-x").mkdir()
    assert RunPaths(tmp_path).phases() == [0, 2, 10]
    assert not RunPaths(tmp_path).phase_done(0)
    np.testing.assert_equal(RunPaths(tmp_path).selection(2), tmp_path / "phase-2" / "selection.parquet")


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path):
    import errno

    from cropi.errors import StorageError

    target = tmp_path / "shard-00000.parquet"
    target.write_text("old")

    def fill_then_fail(tmp):
        with open(tmp, "w") as fh:
            fh.write("half of it")
        raise OSError(errno.ENOSPC, "No space left on device", tmp)

    with pytest.raises(StorageError, match=r"could not write .*shard-00000\.parquet: No space left on device \(errno 28\)"):
        files.atomic_write(target, fill_then_fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["shard-00000.parquet"]
    with pytest.raises(StorageError, match=r"could not write .*ckpt"):
        with files.atomic_dir(tmp_path / "ckpt") as d:
            (d / "a").write_text("x")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-00000.parquet"]


def test_append_after_a_torn_line_cuts_it_off(tmp_path):
    log = tmp_path / "m.jsonl"
    log.write_text('{"step": 0}\n{"step": 1, "lo')  # a process killed mid-append
    files.append_jsonl({"step": 1}, log)
    assert log.read_text() == '{"step": 0}\n{"step": 1}\n'
    log.write_text('{"step": 0')  # torn with no line before it
    files.append_jsonl({"step": 0}, log)
    assert files.read_jsonl(log) == [{"step": 0}]
    files.append_jsonl({"step": 1}, log)  # a whole last line is kept
    assert files.read_jsonl(log) == [{"step": 0}, {"step": 1}]


def test_damaged_shards_are_found_set_aside_and_redone(tmp_path):
    t = pa.table({"x": list(range(12))})
    whole, short, cut = (tmp_path / f"shard-0000{i}.parquet" for i in range(3))
    for p in (whole, short, cut):
        pq.write_table(t if p is not short else t.slice(0, 5), p)
    cut.write_bytes(cut.read_bytes()[:-9])  # a crash cut the footer off
    assert files.parquet_problem(whole, 12) is None
    assert "holds 5 rows, not the 12" in files.parquet_problem(short, 12)
    assert "not a whole Parquet file" in files.parquet_problem(cut)
    jobs = [whole, short, cut, tmp_path / "shard-00003.parquet"]
    with pytest.raises(CropiError, match=r"buffer: .*shard-00001\.parquet: holds 5 rows.*finished"):
        files.shards_to_write(jobs, lambda p: p, lambda p: 12, lambda m: None, "buffer", complete=True)
    assert short.is_file()  # refused: nothing moved
    logged = []
    todo = files.shards_to_write(jobs, lambda p: p, lambda p: 12, logged.append, "buffer")
    assert todo == jobs[1:]
    assert not short.exists() and (tmp_path / ".shard-00001.parquet.damaged").is_file()
    assert not cut.exists() and (tmp_path / ".shard-00002.parquet.damaged").is_file()
    assert len(logged) == 2 and "shard-00002.parquet: not a whole Parquet file" in logged[1]
    assert sorted(p.name for p in tmp_path.glob("shard-*.parquet")) == ["shard-00000.parquet"]


def test_an_influence_shard_short_of_its_buffer_shards_prompts_is_redone(tmp_path):
    # the influence stage's check: one row per prompt of the buffer shard, K trajectories each
    k = 4
    buf = tmp_path / "buffer-shard-00000.parquet"
    pq.write_table(pa.table({"prompt_id": [p for p in range(6) for _ in range(k)]}), buf)
    inf = tmp_path / "shard-00000.parquet"
    pq.write_table(pa.table({"prompt_id": list(range(5))}), inf)  # one prompt short
    from cropi.store.influence import expected_rows

    rows = lambda p: expected_rows(p, k)  # noqa: E731  (what the influence stage passes)
    assert files.shards_to_write([buf], lambda p: inf, rows, lambda m: None, "influence") == [buf]
    pq.write_table(pa.table({"prompt_id": list(range(6))}), inf)
    assert files.shards_to_write([buf], lambda p: inf, rows, lambda m: None, "influence") == []
