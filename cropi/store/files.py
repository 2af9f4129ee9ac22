"""File primitives every stage writes and reads through: atomic writes, one stable hash, JSON.

Atomic: the content goes to a temporary name beside the target and is renamed into place, so a
reader (or a rerun after a crash) never sees half a file. Completion markers (a phase's
`train_summary.json`, a stage's `manifest.json`) are written this way and written last.
A directory is made atomic the same way: built under `NAME.partial`, then renamed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from cropi.errors import CropiError, storage_error


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """Call write(tmp_path) on a temporary name beside `path`, then rename it to `path`."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as e:
        raise storage_error(e, p, atomic=True) from None
    try:
        write(tmp)
        os.replace(tmp, p)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):  # a full disk, a quota, a read-only mount: say which file
            raise storage_error(e, p, atomic=True) from None
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
    """One line appended (a log: a reader skips a torn last line, see read_jsonl). A torn last line
    left by a process killed mid-append (or a full disk) is cut off first, so it never ends up
    inside the file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(row) + "\n").encode()
    try:
        with p.open("ab+") as fh:
            _cut_torn_tail(fh)
            fh.write(line)
    except OSError as e:  # a torn line is cut by the next append
        raise storage_error(e, p) from None


def _cut_torn_tail(fh) -> None:
    end = fh.seek(0, os.SEEK_END)
    if end == 0:
        return
    fh.seek(end - 1)
    if fh.read(1) == b"\n":
        return
    pos = end
    while pos > 0:  # back to the last newline, 64 KiB at a time
        start = max(0, pos - 65536)
        fh.seek(start)
        chunk = fh.read(pos - start)
        i = chunk.rfind(b"\n")
        if i >= 0:
            fh.truncate(start + i + 1)
            return
        pos = start
    fh.truncate(0)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield `PATH.partial` to fill; on success it replaces `path` whole, on error it is removed."""
    out = Path(path)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise storage_error(e, out, atomic=True) from None
        raise
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def remove_stale_tmp(directory: str | Path) -> None:
    """Remove the temporary files (atomic_write's `.NAME.*.tmp`) under DIRECTORY that a process
    killed mid-write left: called when no writer of that directory is running, when a stage starts
    and when it has finished."""
    for stale in Path(directory).rglob(".*.tmp"):
        stale.unlink(missing_ok=True)


def parquet_problem(path: str | Path, num_rows: int | None = None) -> str | None:
    """What is wrong with a Parquet file that a finished write left (None: it is whole): a file
    cut short by a crash or a copy has no footer; NUM_ROWS, when given, is the count it must hold.
    Reads the footer only."""
    import pyarrow.parquet as pq

    try:
        n = pq.ParquetFile(path).metadata.num_rows
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError or others on a damaged footer
        return f"not a whole Parquet file ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    if num_rows is not None and n != num_rows:
        return f"holds {n} rows, not the {num_rows} it was written with"
    return None


def shards_to_write(jobs: list, path_of: Callable, rows_of: Callable | None, log, what: str,
                complete: bool = False) -> list:
    """The JOBS whose output file is still to write. An output that exists is checked (its footer
    and, given ROWS_OF, its row count); a damaged one, which a crash on a file system without
    ordered writes or a cut-short copy can leave, is set aside as `.NAME.damaged` and redone. When
    the stage is COMPLETE (later stages may have read it), a damaged output is refused instead."""
    todo = []
    for job in jobs:
        p = Path(path_of(job))
        if not p.is_file():
            todo.append(job)
            continue
        problem = parquet_problem(p, rows_of(job) if rows_of else None)
        if problem is None:
            continue
        if complete:
            raise CropiError(f"{what}: {p}: {problem}; the stage that wrote it finished and later stages may "
                             "have read it: restore it from a copy, or use a new run.dir to recompute")
        log(f"{what}: {p.name}: {problem}; setting it aside as .{p.name}.damaged and writing it again")
        os.replace(p, p.with_name(f".{p.name}.damaged"))
        todo.append(job)
    return todo


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
