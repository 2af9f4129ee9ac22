"""The JSON records a run writes, each declared once: its kind, schema version and required fields.

    write(KIND, body, path)       checked, stamped {"schema_version": N}, written atomically
    read(KIND, path) / read_if    checked; the stamp is taken off, so readers see the body only
    append(KIND, row, path)       one stamped row of a JSONL log (a torn last line is skipped on read)
    rows(KIND, path)              every row of the log, checked

A record without a stamp was written by a cropi from before the stamps (version 1 is that same
format, stamped): it is read when it has every required field, and refused with an error naming
the file and the missing field otherwise; a record from a newer cropi (a higher version) is
refused, never misread. Which file of a run each kind lives in: cropi.store.paths.RunPaths.

Every JSON file of a run and of a compare directory is one of these kinds. A record's *key*
versions (run.json / phase.json's and the buffer manifest's `key_version`: how the config hash
was computed) are a separate matter, kept by store.run_record and store.buffer. Influence and
selection tables are Parquet, checked column by column where they are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cropi.errors import CropiError
from cropi.store.files import append_jsonl, read_json, read_jsonl, write_json, write_jsonl

STAMP = "schema_version"
NUMBER = (int, float)


@dataclass(frozen=True)
class Kind:
    name: str  # as errors call it: "influence manifest"
    version: int
    required: dict  # field -> type or tuple of types, as isinstance takes them

    def check(self, body, where: str, *, writing: bool = False) -> dict:
        if not isinstance(body, dict):
            raise CropiError(f"{where}: a {self.name} must be a JSON object, got {type(body).__name__}")
        version = body.get(STAMP)
        if version is not None and (not isinstance(version, int) or version > self.version):
            raise CropiError(f"{where}: {self.name} of schema version {version!r}; this cropi reads up to "
                             f"version {self.version} (written by a newer cropi?)")
        for field, types in self.required.items():
            if field not in body:
                old = "" if writing or version is not None else " (an unversioned record from an older cropi)"
                raise CropiError(f"{where}: {self.name}{old} has no field {field!r}")
            value = body[field]
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in _tuple(types)):
                raise CropiError(f"{where}: {self.name} field {field!r} must be "
                                 f"{' or '.join(t.__name__ for t in _tuple(types))}, got {value!r}")
        return {k: v for k, v in body.items() if k != STAMP}

    def stamped(self, body: dict, where: str) -> dict:
        return {STAMP: self.version, **self.check(body, where, writing=True)}


def _tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


INFLUENCE_PLAN = Kind("influence plan", 1, {"hash": str, "checkpoint": str})
INFLUENCE_MANIFEST = Kind("influence manifest", 1, {"mode": str, "sets": list, "num_train_shards": int})
SELECTION_SUMMARY = Kind("selection summary", 1, {"mode": str, "pool_size": int, "selected": int})
TRAIN_SUMMARY = Kind("phase training summary", 1, {"phase": int, "steps": int, "checkpoint": str})
RUN_RESULT = Kind("run result", 1, {"method": str, "run_dir": str, "stage_seconds": dict, "final_checkpoint": str})
REFRESH_MANIFEST = Kind("refresh manifest", 1, {"prompts": int, "shards": list})
REBUFFER_MANIFEST = Kind("rebuffer manifest", 1, {"phase": int, "kl_before": NUMBER, "prompts": int,
                                                  "shards": list})
TRAIN_METRICS_ROW = Kind("training metrics row", 1, {"step": int, "wall_time": NUMBER})
EVAL_ROW = Kind("evaluation row", 1, {"phase": int, "step": int, "sets": dict})
EVENT = Kind("event", 1, {"time": NUMBER, "event": str})
RUN_RECORD = Kind("run record", 1, {"method": str})
PHASE_RECORD = Kind("phase record", 1, {"phase": int, "method": str})
BUFFER_MANIFEST = Kind("buffer manifest", 1, {"complete": bool})
VAL_TARGETS = Kind("exact-mode validation targets", 1, {})  # {set name: {num_prompts, norm, ...}}
COMPARE_RECORD = Kind("compare record", 1, {"config": str, "arms": list, "seeds": list})
BASE_MODEL_MARKER = Kind("base model marker", 1, {"config_hash": str, "seed": int})

KINDS = (INFLUENCE_PLAN, INFLUENCE_MANIFEST, SELECTION_SUMMARY, TRAIN_SUMMARY, RUN_RESULT, REFRESH_MANIFEST,
         REBUFFER_MANIFEST, TRAIN_METRICS_ROW, EVAL_ROW, EVENT, RUN_RECORD, PHASE_RECORD, BUFFER_MANIFEST, VAL_TARGETS,
         COMPARE_RECORD, BASE_MODEL_MARKER)


def write(kind: Kind, body: dict, path: str | Path) -> Path:
    return write_json(kind.stamped(body, str(path)), path)


def read(kind: Kind, path: str | Path) -> dict:
    return kind.check(read_json(path, kind.name), str(path))


def read_if(kind: Kind, path: str | Path) -> dict | None:
    return read(kind, path) if Path(path).is_file() else None


def append(kind: Kind, row: dict, path: str | Path) -> None:
    append_jsonl(kind.stamped(row, str(path)), path)


def rewrite(kind: Kind, rows_: list[dict], path: str | Path) -> Path:
    """The whole log replaced at once (a resumed phase cutting rows past its checkpoint)."""
    return write_jsonl([kind.stamped(r, str(path)) for r in rows_], path)


def rows(kind: Kind, path: str | Path) -> list[dict]:
    """Every row of a log ([] before it exists), each checked; the stamps taken off."""
    return [kind.check(r, f"{path} row {i}") for i, r in enumerate(read_jsonl(path))]
