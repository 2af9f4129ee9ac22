"""What each artifact depends on is declared once, in the config fields' `feeds=` metadata, and
every key and resume check derives from it. These tests change each field in turn and check that
exactly the artifacts it is declared to feed get a new key, and that a begun phase refuses exactly
the fields that feed a phase."""

from __future__ import annotations

import copy
import json
import shutil

import pytest

from cropi.config import (ARTIFACTS, BASE_MODEL, BUFFER, INFLUENCE, PHASE_ARTIFACTS, SELECTION, SUITE, TRAINING,
                          field_paths, load_config)
from cropi.data.suite import suite_key
from cropi.errors import CropiError
from cropi.influence.actor import influence_hash
from cropi.data.base_model import base_model_hash
from cropi.store import buffer as store_buffer
from cropi.store.buffer import buffer_hash
from cropi.store.run_record import check_phase, claim_phase, phase_inputs


def _keys(cfg) -> dict[str, object]:
    """Each artifact's key as the code that writes or checks it computes it."""
    return {SUITE: suite_key(cfg), BASE_MODEL: base_model_hash(cfg), BUFFER: buffer_hash(cfg),
            INFLUENCE: influence_hash(cfg, "ckpt"), SELECTION: cfg.artifact_hash(SELECTION),
            TRAINING: cfg.artifact_hash(TRAINING), "phase": json.dumps(phase_inputs(cfg), sort_keys=True)}


def _other(value, md):
    """A different value of the same type (validity does not matter to a key)."""
    if "choices" in md:
        return next(c for c in md["choices"] if c != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value else 0.25
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, list):
        return value[:-1] if len(value) > 1 else [*value, "x"]
    if isinstance(value, dict):
        return {**value, "other": 1}
    raise AssertionError(f"no other value for {value!r}")


def _with(cfg, name: str, value):
    out = copy.deepcopy(cfg)
    *sections, leaf = name.split(".")
    obj = out
    for s in sections:
        obj = getattr(obj, s)
    setattr(obj, leaf, value)
    return out


def _expected(feeds: tuple[str, ...]) -> set[str]:
    want = set(feeds)
    if BUFFER in want:
        want.add(INFLUENCE)  # a phase's influence is computed from the buffer: its key holds the buffer's
    if want & set(PHASE_ARTIFACTS):
        want.add("phase")
    return want


def test_every_field_declares_what_it_feeds():
    for name, f, _ in field_paths():
        assert "feeds" in f.metadata, name
        assert set(f.metadata["feeds"]) <= set(ARTIFACTS), name
    resources = [n for n, f, _ in field_paths() if n.startswith("resources.") and f.metadata["feeds"]]
    assert not resources, f"resources must feed nothing (a run resumes on other hardware): {resources}"


def test_each_field_changes_exactly_the_keys_it_feeds(tiny_model):
    base = load_config("configs/tiny-cpu.yaml", [f"model.path={tiny_model}"])
    before = _keys(base)
    wrong = []
    for name, f, value in field_paths(base):
        changed = _keys(_with(base, name, _other(value, f.metadata)))
        got = {k for k in before if changed[k] != before[k]}
        if got != _expected(f.metadata["feeds"]):
            wrong.append(f"{name}: declared {f.metadata['feeds']}, changed {sorted(got)}")
    assert not wrong, "\n".join(wrong)


def test_a_begun_phase_refuses_exactly_the_fields_that_feed_a_phase(tiny_model, tmp_path):
    base = load_config("configs/tiny-cpu.yaml", [f"model.path={tiny_model}", f"run.dir={tmp_path / 'run'}"])
    claim_phase(base, 0, "cropi")
    (tmp_path / "run" / "phase-0" / "selection.json").write_text("{}")  # the phase has begun
    for name, f, value in field_paths(base):
        if name == "run.dir":
            continue
        cfg = _with(base, name, _other(value, f.metadata))
        if set(f.metadata["feeds"]) & set(PHASE_ARTIFACTS):
            with pytest.raises(CropiError, match="computed with another config"):
                check_phase(cfg, 0, "cropi")
        else:
            check_phase(cfg, 0, "cropi")


def test_the_model_enters_by_content_not_by_path(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("CROPI_CACHE_DIR", str(tmp_path / "cache"))
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_model, a)
    shutil.copytree(tiny_model, b)
    cfg_a = load_config("configs/tiny-cpu.yaml", [f"model.path={a}"])
    cfg_b = load_config("configs/tiny-cpu.yaml", [f"model.path={b}"])
    assert buffer_hash(cfg_a) == buffer_hash(cfg_b)  # a copy elsewhere reuses the buffer
    assert phase_inputs(cfg_a) == phase_inputs(cfg_b)
    key = buffer_hash(cfg_a)
    conf = json.loads((a / "config.json").read_text())
    conf["rms_norm_eps"] = 1e-5  # the model replaced in place: same path, other content
    (a / "config.json").write_text(json.dumps(conf))
    assert buffer_hash(cfg_a) != key and buffer_hash(cfg_b) == key
    assert (tmp_path / "cache" / "file-digests.json").is_file()  # digests cached by size and mtime


def test_buffers_and_phases_keyed_before_the_declaration_still_resume(tiny_model, tmp_path):
    cfg = load_config("configs/tiny-cpu.yaml", [f"model.path={tiny_model}", f"run.dir={tmp_path / 'run'}"])
    bdir = tmp_path / "run" / "buffer"
    bdir.mkdir(parents=True)
    v1 = {"schema_version": store_buffer.SCHEMA_VERSION, "config_hash": store_buffer._key_v1(cfg), "splits": {},
          "complete": True}
    (bdir / "manifest.json").write_text(json.dumps(v1))
    assert store_buffer.built_with(cfg, v1)
    store_buffer.claim_buffer(cfg, [])  # accepted
    other = load_config("configs/tiny-cpu.yaml", [f"model.path={tiny_model}", f"run.dir={tmp_path / 'run'}",
                                                  "rollout.k_train=3"])
    with pytest.raises(CropiError, match="different config"):
        store_buffer.claim_buffer(other, [])
    # a phase record without key_version: every field but resources, the model by path
    pdir = tmp_path / "run" / "phase-0"
    pdir.mkdir()
    (pdir / "selection.json").write_text("{}")
    old_inputs = {**phase_inputs(cfg), "model.path": cfg.model.path, "data.data_dir": cfg.data.data_dir}
    (pdir / "phase.json").write_text(json.dumps({"phase": 0, "method": "cropi", "inputs": old_inputs}))
    check_phase(cfg, 0, "cropi")
    with pytest.raises(CropiError, match="trainer.lr"):
        check_phase(_with(cfg, "trainer.lr", 0.5), 0, "cropi")
