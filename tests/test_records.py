"""Typed run records (cropi.store.records): stamped on write, checked on read, old ones read or
refused by name, never misread."""

import json

import pytest

from cropi.errors import CropiError
from cropi.store import records


def test_round_trip_stamps_the_file_and_hands_back_the_body(tmp_path):
    body = {"method": "cropi", "run_dir": "/r", "stage_seconds": {"buffer": 1.5}, "final_checkpoint": "/c"}
    p = records.write(records.RUN_RESULT, body, tmp_path / "run_result.json")
    assert json.loads(p.read_text()) == {"schema_version": 1, **body}
    assert records.read(records.RUN_RESULT, p) == body
    assert records.read_if(records.RUN_RESULT, tmp_path / "absent.json") is None


def test_an_unversioned_record_is_read_when_whole_and_refused_by_name_when_not(tmp_path):
    old = tmp_path / "manifest.json"
    old.write_text(json.dumps({"prompts": 3, "shards": ["shard-00000.parquet"]}))  # before the stamps
    assert records.read(records.REFRESH_MANIFEST, old) == {"prompts": 3, "shards": ["shard-00000.parquet"]}
    old.write_text(json.dumps({"prompts": 3}))
    with pytest.raises(CropiError, match=r"manifest.json: refresh manifest \(an unversioned record from an older "
                                         r"cropi\) has no field 'shards'"):
        records.read(records.REFRESH_MANIFEST, old)


def test_a_newer_or_mistyped_record_is_refused(tmp_path):
    p = tmp_path / "plan.json"
    p.write_text(json.dumps({"schema_version": 2, "hash": "h", "checkpoint": "c"}))
    with pytest.raises(CropiError, match=r"influence plan of schema version 2; this cropi reads up to version 1"):
        records.read(records.INFLUENCE_PLAN, p)
    p.write_text(json.dumps({"schema_version": 1, "hash": 7, "checkpoint": "c"}))
    with pytest.raises(CropiError, match=r"influence plan field 'hash' must be str, got 7"):
        records.read(records.INFLUENCE_PLAN, p)
    p.write_text("[1, 2]")
    with pytest.raises(CropiError, match="must be a JSON object"):
        records.read(records.INFLUENCE_PLAN, p)
    with pytest.raises(CropiError, match=r"training metrics row field 'step' must be int, got True"):
        records.append(records.TRAIN_METRICS_ROW, {"step": True, "wall_time": 1.0}, tmp_path / "m.jsonl")


def test_a_record_that_cannot_be_written_leaves_the_old_file(tmp_path):
    p = records.write(records.INFLUENCE_PLAN, {"hash": "h", "checkpoint": "c"}, tmp_path / "plan.json")
    before = p.read_text()
    with pytest.raises(CropiError, match="has no field 'checkpoint'"):
        records.write(records.INFLUENCE_PLAN, {"hash": "other"}, p)
    assert p.read_text() == before


def test_logs_stamp_every_row_and_read_old_rows(tmp_path):
    log = tmp_path / "train_metrics.jsonl"
    log.write_text(json.dumps({"step": 0, "wall_time": 1.0}) + "\n")  # a row from before the stamps
    records.append(records.TRAIN_METRICS_ROW, {"step": 1, "wall_time": 2.0, "loss": 0.5}, log)
    assert [json.loads(x).get("schema_version") for x in log.read_text().splitlines()] == [None, 1]
    assert records.rows(records.TRAIN_METRICS_ROW, log) == [{"step": 0, "wall_time": 1.0},
                                                            {"step": 1, "wall_time": 2.0, "loss": 0.5}]
    records.rewrite(records.TRAIN_METRICS_ROW, records.rows(records.TRAIN_METRICS_ROW, log)[:1], log)
    assert [json.loads(x) for x in log.read_text().splitlines()] == [{"schema_version": 1, "step": 0, "wall_time": 1.0}]
    with open(log, "a") as f:
        f.write(json.dumps({"step": 2}) + "\n")
    with pytest.raises(CropiError, match=r"train_metrics.jsonl row 1: training metrics row .* has no field 'wall_time'"):
        records.rows(records.TRAIN_METRICS_ROW, log)


def test_every_kind_has_a_distinct_name():
    assert len({k.name for k in records.KINDS}) == len(records.KINDS)


def test_every_json_file_of_a_run_goes_through_a_kind():
    """No module outside store/files.py, records.py and the compare report (its own output, not
    a run file) reads or writes run JSON by hand: each file has one declared kind."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "cropi"
    allowed = {"store/files.py", "store/records.py", "compare/report.py",  # its own output
               "data/suite.py", "data/dataset.py"}  # the data dir's stamp; users' JSONL datasets
    offenders = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if rel in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                    "read_json", "read_json_if", "write_json", "append_jsonl", "read_jsonl", "write_jsonl"):
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == [], offenders


def test_records_written_before_the_stamps_still_read(tmp_path):
    """The buffer manifest carried schema_version 1 before it was a kind; run.json, compare.json,
    val_targets.json and the base-model marker had no stamp: all read as version 1 when whole."""
    cases = [(records.BUFFER_MANIFEST, {"schema_version": 1, "key_version": 2, "config_hash": "ab", "splits": {},
                                        "complete": True}),
             (records.RUN_RECORD, {"method": "cropi", "config": {"run": {}}, "history": []}),
             (records.COMPARE_RECORD, {"config": "c.yaml", "arms": ["full"], "seeds": [0]}),
             (records.VAL_TARGETS, {"add": {"num_prompts": 8, "norm": 1.5}}),
             (records.BASE_MODEL_MARKER, {"config_hash": "x", "seed": 0, "pass_rates": {}})]
    for kind, body in cases:
        p = tmp_path / "r.json"
        p.write_text(json.dumps(body))
        assert records.read(kind, p) == {k: v for k, v in body.items() if k != "schema_version"}
    p.write_text(json.dumps({"config": "c.yaml", "arms": ["full"]}))
    with pytest.raises(CropiError, match="compare record .* has no field 'seeds'"):
        records.read(records.COMPARE_RECORD, p)
