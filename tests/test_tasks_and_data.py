import json

import pytest

from cropi.data.dataset import load_prompts, write_rows
from cropi.data.tasks import make_suite, write_suite
from cropi.errors import DataError


def test_suite_is_deterministic_disjoint_and_correct(tmp_path):
    train, val = make_suite(["add", "sub", "mul", "mod"], 400, 30, seed=3)
    again, _ = make_suite(["add", "sub", "mul", "mod"], 400, 30, seed=3)
    assert train == again
    assert len(train) == 400 and all(len(v) == 30 for v in val.values())
    val_exprs = {r["prompt"][0]["content"] for rows in val.values() for r in rows}
    assert not val_exprs & {r["prompt"][0]["content"] for r in train}
    for row in train + [r for rows in val.values() for r in rows]:
        expr = row["prompt"][0]["content"].rstrip("=")
        assert int(row["reward_model"]["ground_truth"]) == eval(expr)  # the answer is the expression's value
    fams = [r["extra_info"]["family"] for r in train]
    assert {f: fams.count(f) for f in set(fams)} == {"add": 100, "sub": 100, "mul": 100, "mod": 100}


def test_write_and_load_roundtrip(tmp_path):
    paths = write_suite(tmp_path, ["add", "mod"], 50, 10, seed=0)
    rows = load_prompts(paths["train"])
    assert len(rows) == 50 and rows[7].prompt_id == 7
    assert rows[0].messages[0]["role"] == "user" and rows[0].data_source.startswith("arith_")
    assert [r.family for r in load_prompts(paths["mod"])] == ["mod"] * 10


def _jsonl(tmp_path, rows):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return p


GOOD = {"data_source": "gsm8k", "prompt": "What is 2+2?", "reward_model": {"ground_truth": "4"}}


def test_jsonl_accepted_with_string_prompt(tmp_path):
    rows = load_prompts(_jsonl(tmp_path, [GOOD, GOOD]))
    assert rows[1].messages == [{"role": "user", "content": "What is 2+2?"}] and rows[1].ground_truth == "4"


@pytest.mark.parametrize("bad, field", [
    ({**GOOD, "data_source": ""}, "data_source"),
    ({**GOOD, "prompt": []}, "prompt"),
    ({**GOOD, "prompt": [{"role": "user"}]}, r"prompt\[0\]"),
    ({**GOOD, "reward_model": {}}, "reward_model.ground_truth"),
    ({**GOOD, "reward_model": {"ground_truth": "  "}}, "reward_model.ground_truth"),
    ({**GOOD, "extra_info": [1]}, "extra_info"),
])
def test_malformed_rows_name_file_and_row(tmp_path, bad, field):
    p = _jsonl(tmp_path, [GOOD, GOOD, bad])
    with pytest.raises(DataError, match=rf"d\.jsonl row 2: (field ')?{field}"):
        load_prompts(p)


def test_malformed_parquet_row_and_files(tmp_path):
    p = write_rows([GOOD, {**GOOD, "reward_model": {"ground_truth": None}}], tmp_path / "x.parquet")
    with pytest.raises(DataError, match=r"x\.parquet row 1"):
        load_prompts(p)
    with pytest.raises(DataError, match="does not exist"):
        load_prompts(tmp_path / "missing.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="junk.parquet: not a readable Parquet"):
        load_prompts(tmp_path / "junk.parquet")
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{oops\n')
    with pytest.raises(DataError, match=r"bad\.jsonl row 1 \(line 2\): invalid JSON"):
        load_prompts(tmp_path / "bad.jsonl")
    (tmp_path / "d.csv").write_text("a\n")
    with pytest.raises(DataError, match="unsupported dataset format"):
        load_prompts(tmp_path / "d.csv")
