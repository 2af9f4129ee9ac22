"""Prompt datasets: Parquet or JSONL rows in verl's schema.

Each row:
  data_source              str   where the prompt comes from; the selector reports composition by it
  prompt                   list of {"role": str, "content": str} chat messages, or a plain str
  reward_model.ground_truth  str or number  what the reward function checks the answer against
  extra_info               optional mapping (split, index, family, ...), kept as is
  ability                  optional str
A row's `prompt_id` is its 0-based position in the file. Malformed rows raise `DataError`
naming the file and the row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cropi.errors import DataError
from cropi.store.files import read_jsonl, write_table


@dataclass
class PromptRow:
    prompt_id: int
    data_source: str
    messages: list[dict]
    ground_truth: str
    extra_info: dict = field(default_factory=dict)

    @property
    def family(self) -> str:
        return str(self.extra_info.get("family", self.data_source))


def _field(raw: dict, dotted: str):
    """raw['a']['b'] for 'a.b' (None where a level is missing)."""
    v = raw
    for k in dotted.split("."):
        v = v.get(k) if isinstance(v, dict) else None
    return v


def _parse_row(raw: dict, where: str, prompt_id: int, input_key: str = "prompt",
               label_key: str = "reward_model.ground_truth", default_data_source: str = "") -> PromptRow:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a mapping, got {type(raw).__name__}")
    ds = raw.get("data_source") or raw.get("datasource") or default_data_source  # OpenRLHF writes 'datasource'
    if not isinstance(ds, str) or not ds:
        raise DataError(f"{where}: field 'data_source' must be a non-empty string, got {raw.get('data_source')!r} "
                        "(a dataset without one: set data.default_data_source)")
    prompt = _field(raw, input_key)
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise DataError(f"{where}: field {input_key!r} (data.input_key) must be a non-empty list of messages or a "
                        f"string, got {prompt!r}")
    for j, msg in enumerate(prompt):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or not isinstance(msg.get("content"), str):
            raise DataError(f"{where}: {input_key}[{j}] must be {{'role': str, 'content': str}}, got {msg!r}")
    gt = _field(raw, label_key)
    if isinstance(gt, bool) or not isinstance(gt, (str, int, float)) or (isinstance(gt, str) and not gt.strip()):
        raise DataError(f"{where}: field {label_key!r} (data.label_key) must be a non-empty string or number, "
                        f"got {gt!r}")
    extra = raw.get("extra_info") or {}
    if not isinstance(extra, dict):
        raise DataError(f"{where}: field 'extra_info' must be a mapping, got {type(extra).__name__}")
    if not any(m["content"].strip() for m in prompt):
        raise DataError(f"{where}: field 'prompt' has no text (every message's content is empty); "
                        "the model would be sampled from BOS alone")
    msgs = [{"role": m["role"], "content": m["content"]} for m in prompt]
    return PromptRow(prompt_id, ds, msgs, str(gt), dict(extra))


def _read_raw(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        try:
            return pq.read_table(path).to_pylist()
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    if path.suffix in (".jsonl", ".json"):
        return read_jsonl(path, log=False, error=DataError)
    raise DataError(f"{path}: unsupported dataset format {path.suffix!r}; use .parquet or .jsonl")


def load_prompts(path: str | Path, input_key: str = "prompt", label_key: str = "reward_model.ground_truth",
                 default_data_source: str = "") -> list[PromptRow]:
    """Read and validate every row of a dataset file (keys: data.input_key, data.label_key)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"dataset file {p} does not exist")
    raw = _read_raw(p)
    if not raw:
        raise DataError(f"{p}: dataset has no rows")
    return [_parse_row(r, f"{p} row {i}", i, input_key, label_key, default_data_source) for i, r in enumerate(raw)]


def write_rows(rows: list[dict], path: str | Path) -> Path:
    """Write verl-schema rows as Parquet (atomically)."""
    return write_table(pa.Table.from_pylist(rows), path)


def render_prompt(messages: list[dict], tokenizer=None) -> str:
    """The text a model is prompted with: the tokenizer's chat template when it has one,
    else the messages' contents joined (the tiny task model has no template)."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return "\n".join(m["content"] for m in messages)
