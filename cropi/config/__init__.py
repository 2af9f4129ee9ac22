"""The typed configuration of a whole CROPI run.

One dataclass per section; a YAML file maps onto them 1:1 (`section: {field: value}`, and
`resources: {rollout: {field: value}}` for the per-stage resource sub-sections). `--set
section.field=value` (or `resources.rollout.num_workers=2`) on any `cropi` subcommand overrides
one field; the value is parsed as YAML, so `--set selection.alpha=0.2` gives a float and
`--set data.families=[add,mul]` a list. Unknown sections or fields and invalid values raise
`ConfigError` naming `section.field`.

Defaults, allowed values and minimums live in cropi.config.schema and only there, as field metadata (`choices`,
`min`, `above`, `max`); validation, the CLI and the generated README reference all read them.
`configs/*.yaml` list what differs from the defaults.

What counts for resume is declared once: every field names, in its `feeds=` metadata, the
artifacts whose content it decides (ARTIFACTS: the synthetic suite, the tiny base model, the
buffer, a phase's influence, its selection, its training). Every key, every resume check and
every "changed config" refusal is derived from that declaration (`artifact_inputs`,
`phase_inputs`); a field that feeds nothing (`feeds=()`: every `resources.*` field, trackers,
sync transport, retries) may change on any resume. `model.path` enters by the content of the
model directory (`cropi.hashing.content_digest`), not by its name.

    schema.py     the dataclasses, their rules and feeds, and what is derived from them
    loading.py    YAML files and --set overrides onto the schema (load_config, from_dict)
    reference.py  the README's config reference
"""

from cropi.config.loading import from_dict, load_config, parse_override
from cropi.config.reference import reference_markdown
from cropi.config.schema import *  # noqa: F401,F403
from cropi.config.schema import __all__ as _schema_all

__all__ = [*_schema_all, "load_config", "from_dict", "parse_override", "reference_markdown"]
