"""File primitives every stage writes and reads through: atomic writes, one stable hash, JSON.

Atomic: the content goes to a temporary name beside the target and is renamed into place, so a
reader (or a rerun after a crash) never sees half a file. Completion markers (a phase's
`train_summary.json`, a stage's `manifest.json`) are written this way and written last.
A directory is made atomic the same way: built under `NAME.partial`, then renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from cropi.errors import CropiError


def stable_hash(obj) -> str:
    """Short sha256 of a JSON-able object (keys sorted): what an artifact was built from."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """Call write(tmp_path) on a temporary name beside `path`, then rename it to `path`."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def write_text(text: str, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(obj, path: str | Path) -> Path:
    """JSON (indented, NaN refused) written atomically; the encoding fails before any write."""
    return write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n", path)


def write_table(table, path: str | Path, use_dictionary: bool = True) -> Path:
    """A Parquet file written atomically. Gradient shards pass use_dictionary=False: dictionary
    encoding of float columns only costs time (see cropi.store.influence)."""
    import pyarrow.parquet as pq

    return atomic_write(path, lambda tmp: pq.write_table(table, tmp, use_dictionary=use_dictionary))


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    return write_text("".join(json.dumps(r) + "\n" for r in rows), path)


def append_jsonl(row: dict, path: str | Path) -> None:
    """One line appended (a log: a reader skips a torn last line, see read_jsonl)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield `PATH.partial` to fill; on success it replaces `path` whole, on error it is removed."""
    out = Path(path)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def read_json(path: str | Path, what: str = "file"):
    """Parsed JSON; a missing or malformed file raises CropiError naming it."""
    p = Path(path)
    if not p.is_file():
        raise CropiError(f"{what} {p} does not exist")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CropiError(f"{p}: not valid JSON ({e.msg})") from None


def read_json_if(path: str | Path, what: str = "file"):
    """read_json, or None when the file does not exist."""
    return read_json(path, what) if Path(path).is_file() else None


def read_jsonl(path: str | Path, log: bool = True, error: type[CropiError] = CropiError) -> list:
    """Every JSON line of a file, blank lines skipped. A log (`log=True`, the default) may not
    exist yet ([]) and may end in a line torn by a process killed mid-append, which is skipped.
    Any other bad line raises `error` naming the file, the row and the line."""
    p = Path(path)
    if not p.is_file():
        if log:
            return []
        raise error(f"file {p} does not exist")
    lines = p.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if log and i == len(lines) - 1:
                break
            raise error(f"{p} row {len(out)} (line {i + 1}): invalid JSON ({e.msg})") from None
    return out
