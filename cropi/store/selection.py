"""One phase's selection on disk: the one writer and the one reader of `selection.parquet`.

    phase-M/selection.parquet        one row per pool prompt, in prompt_id order:
        prompt_id int64, selected bool            (every method)
        data_source, family, zero_grad,           (cropi: the selector's evidence)
        score__<set> (cosine; 0.0 when zero_grad), rank__<set> (1-based), fused (-inf when zero_grad)
    phase-M/selection_summary.json   the selector's numbers (cropi.selection.select)

The summary is removed before the table is replaced and written after it, so a summary on disk
always describes the selection.parquet beside it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from cropi.errors import CropiError
from cropi.store import records
from cropi.store.files import write_table

SELECTION_FILE = "selection.parquet"
SUMMARY_FILE = "selection_summary.json"


def write_selection(table: pa.Table, path: str | Path, summary: dict | None = None) -> Path:
    """Write the selection table (and its summary beside it) atomically. The summary is encoded
    first, so a summary that cannot be written leaves the old files untouched."""
    if "prompt_id" not in table.column_names or "selected" not in table.column_names:
        raise CropiError(f"selection table for {path} needs prompt_id and selected columns, has {table.column_names}")
    p = Path(path)
    summary_path = p.with_name(SUMMARY_FILE)
    if summary is not None:
        import json

        json.dumps(records.SELECTION_SUMMARY.stamped(summary, str(summary_path)), allow_nan=False)  # fails here,
        # not between the two writes
    summary_path.unlink(missing_ok=True)
    write_table(table, p)
    if summary is not None:
        records.write(records.SELECTION_SUMMARY, summary, summary_path)
    return p


def baseline_table(prompt_ids, selected) -> pa.Table:
    return pa.table({"prompt_id": pa.array(np.asarray(prompt_ids, np.int64)),
                     "selected": pa.array(np.asarray(selected, bool))})


def read_selection(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """The selection table (a directory means its selection.parquet), checked: prompt_id and
    selected present, non-null, and every prompt_id once."""
    import pyarrow.parquet as pq

    p = Path(path)
    if p.is_dir():
        p = p / SELECTION_FILE
    if not p.is_file():
        raise CropiError(f"selection file {p} does not exist")
    try:
        t = pq.read_table(p, columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise CropiError(f"selection file {p}: not a readable Parquet file ({e})") from None
    for col, check in (("prompt_id", pa.types.is_integer), ("selected", pa.types.is_boolean)):
        if col not in t.column_names:
            raise CropiError(f"selection file {p} has no {col} column")
        if not check(t.schema.field(col).type) or t.column(col).null_count:
            raise CropiError(f"selection file {p}: column {col!r} must be non-null "
                             f"{'integers' if col == 'prompt_id' else 'bool'}, got {t.schema.field(col).type}")
    ids = t.column("prompt_id").to_numpy()
    if len(np.unique(ids)) != len(ids):
        raise CropiError(f"selection file {p} lists a prompt_id more than once")
    return t


def selected_ids(path: str | Path) -> list[int]:
    """Selected prompt ids of a selection file, in file order."""
    t = read_selection(path, ["prompt_id", "selected"])
    ids = t.column("prompt_id").to_numpy()
    sel = t.column("selected").to_numpy(zero_copy_only=False)
    return [int(i) for i in ids[sel]]
