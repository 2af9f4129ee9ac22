"""The README's config reference, generated from the schema's field metadata
(`cropi config-reference`; tests/test_config.py checks the README holds the current one)."""

from __future__ import annotations

import json

from cropi.config.schema import field_paths


def _rule_text(md) -> str:
    parts = []
    if "choices" in md:
        parts.append("one of " + ", ".join(f"`{c}`" for c in md["choices"]))
    if "min" in md:
        parts.append(f">= {md['min']}")
    if "above" in md:
        parts.append(f"> {md['above']}")
    if "max" in md:
        parts.append(f"<= {md['max']}")
    return "; ".join(parts)


def reference_markdown() -> str:
    """The config reference for the README, generated from the dataclasses."""
    lines = ["| field | default | allowed | feeds | meaning |", "| --- | --- | --- | --- | --- |"]
    for name, f, value in field_paths():
        feeds = ", ".join(f.metadata["feeds"]) or "nothing"
        lines.append(f"| `{name}` | `{json.dumps(value)}` | {_rule_text(f.metadata)} | {feeds} | {f.metadata['help']} |")
    return "\n".join(lines)
