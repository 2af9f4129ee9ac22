"""Security: no code on the package's paths deserialises with pickle, loads torch files without
weights_only, evaluates strings or starts a shell; the weight-sync control message is plain JSON
and checked; the local Ray dashboard listens on loopback only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("cropi", "ray_jobs", "benchmarks", "scripts")


def findings(source: str, where: str = "<src>") -> list[str]:
    """Unsafe calls in Python source: pickle/marshal loads, torch.load without weights_only=True,
    builtin eval/exec, yaml.load/unsafe_load, any call with shell=True."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        f, kw = node.func, {k.arg: k.value for k in node.keywords}
        name = f.id if isinstance(f, ast.Name) else None
        dotted = f"{f.value.id}.{f.attr}" if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else None
        bad = None
        if name in ("eval", "exec"):
            bad = f"builtin {name}()"
        elif dotted in ("pickle.load", "pickle.loads", "marshal.load", "marshal.loads", "yaml.load", "yaml.unsafe_load"):
            bad = dotted
        elif dotted == "torch.load" and not (isinstance(kw.get("weights_only"), ast.Constant)
                                             and kw["weights_only"].value is True):
            bad = "torch.load without weights_only=True"
        elif isinstance(kw.get("shell"), ast.Constant) and kw["shell"].value is True:
            bad = "shell=True"
        if bad:
            out.append(f"{where}:{node.lineno}: {bad}")
    return out


def test_the_scanner_finds_each_unsafe_call():
    src = ("import pickle, torch, subprocess, yaml\npickle.loads(b'')\ntorch.load('x')\n"
           "torch.load('x', weights_only=False)\neval('1')\nexec('x=1')\nsubprocess.run('ls', shell=True)\n"
           "yaml.load('a')\n")
    assert len(findings(src)) == 7
    ok = "import torch, yaml\ntorch.load('x', weights_only=True)\nmodel.eval()\nyaml.safe_load('a')\n"
    assert findings(ok) == []


def test_no_unsafe_call_in_the_package_jobs_benchmarks_or_scripts():
    files = [p for d in SCANNED for p in (ROOT / d).rglob("*.py")]
    files += [p for p in (ROOT / "scripts").iterdir() if p.is_file() and p.read_text(errors="ignore").startswith("#!/usr/bin/env python")]
    assert len(files) > 50
    bad = [x for p in files for x in findings(p.read_text(), str(p.relative_to(ROOT)))]
    assert bad == []


def test_sync_buckets_travel_as_checked_json():
    import torch

    from cropi.sync.buckets import layout_buckets, buckets_from_json, buckets_to_json

    layout = layout_buckets([("a", (3, 4), torch.float32), ("b", (5,), torch.float32), ("c", (2,), torch.bfloat16)], 1 << 20)
    assert buckets_from_json(buckets_to_json(layout)) == layout
    text = buckets_to_json(layout)
    for broken, match in ((text.replace('"float32"', '"object"', 1), "dtype"),
                          (text.replace('"numel": 17', '"numel": 18', 1), "holds 17 elements"),
                          ("\x80\x04pickle", "not a valid bucket layout"), ('[{"dtype": "float32"}]', "not a valid")):
        with pytest.raises(ValueError, match=match):
            buckets_from_json(broken)


def test_local_ray_dashboard_is_bound_to_loopback():
    tree = ast.parse((ROOT / "cropi" / "ray_utils.py").read_text())
    hosts = [k.value.value for n in ast.walk(tree) if isinstance(n, ast.Call)
             for k in n.keywords if k.arg == "dashboard_host"]
    assert hosts == ["127.0.0.1"]
