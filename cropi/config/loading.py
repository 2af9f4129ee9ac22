"""A config from YAML and `--set section.field=value` overrides, onto the schema
(cropi.config.schema): types checked against each field's annotation (ints accepted for floats,
YAML 1.1's '3e-4' read as a float), unknown sections and fields refused naming them.

A hand-written mapper rather than OmegaConf or pydantic: the schema is plain dataclasses whose
field metadata (help, rules, feeds) the hashes, the CLI and the README reference all read; the
coercion this needs is the 50 lines below, and either library would add a second model of the
same fields (pydantic) or interpolation and merge rules we do not want in a config that keys
artifacts (OmegaConf).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from cropi.config.schema import Config, _is_section
from cropi.errors import ConfigError


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Check a YAML value against the field's declared type; ints are accepted for floats."""
    hints = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}
    if isinstance(annotation, str) and "|" in annotation:  # a union: the first type the value is
        kinds = [hints[a.strip()] for a in annotation.split("|")]
        if any(isinstance(value, k) and not isinstance(value, bool) for k in kinds):
            return value
        raise ConfigError(f"config field {name}: expected {' or '.join(k.__name__ for k in kinds)}, "
                          f"got {type(value).__name__} {value!r}")
    expected = hints[annotation] if isinstance(annotation, str) else annotation
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):  # YAML 1.1 reads '3e-4' as a string
        try:
            return float(value)
        except ValueError:
            pass
    if expected is int and isinstance(value, bool):
        raise ConfigError(f"config field {name}: expected int, got bool {value!r}")
    if expected is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, expected):
        raise ConfigError(f"config field {name}: expected {expected.__name__}, got {type(value).__name__} {value!r}")
    return value


def _apply(obj, path: list[str], value: Any, prefix: str = "") -> None:
    """Set obj.<path...> = value, path like ['rollout', 'k_train'] or ['resources', 'rollout', 'num_workers']."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    key, rest = path[0], path[1:]
    name = f"{prefix}{key}"
    if key not in fields:
        if not prefix:
            raise ConfigError(f"unknown config section {key!r}; sections are {sorted(fields)}")
        raise ConfigError(f"unknown config field {name}; fields of {prefix[:-1]} are {sorted(fields)}")
    f = fields[key]
    if _is_section(f) or not prefix:
        sub = getattr(obj, key)
        if not rest:
            if not isinstance(value, dict):
                raise ConfigError(f"config section {name} must be a mapping of fields, got {value!r}")
            for k, v in value.items():
                _apply(sub, [k], v, f"{name}.")
            return
        _apply(sub, rest, value, f"{name}.")
        return
    if rest:
        raise ConfigError(f"config field {name} is not a section; {'.'.join([name] + rest)} does not exist")
    setattr(obj, key, _coerce(value, f.type, name))


def from_dict(data: dict, source: str = "<dict>") -> Config:
    cfg = Config()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections, got {type(data).__name__}")
    for section, values in data.items():
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {section!r} must be a mapping of fields")
        _apply(cfg, [section], values)
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """'section.field=value' -> (['section', 'field'], YAML-parsed value)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set {text!r}: expected section.field=value")
    lhs, rhs = text.split("=", 1)
    try:
        value = yaml.safe_load(rhs) if rhs.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({e})") from None
    return [p.strip() for p in lhs.split(".")], value


def load_config(path: str | Path | None, overrides: list[str] | tuple = ()) -> Config:
    """Read a YAML config, apply `section.field=value` overrides, validate."""
    data: dict = {}
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        if data is None:
            raise ConfigError(f"config file {p} is empty; an empty file would run every default "
                              "(write at least the fields that differ, e.g. run.dir)")
    cfg = from_dict(data, source)
    for text in overrides:
        keys, value = parse_override(text)
        _apply(cfg, keys, value)
    return cfg.validate()
