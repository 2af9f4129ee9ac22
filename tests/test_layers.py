"""The package's layers, read from its source: every `import` (at module level or inside a
function) of every module under cropi/, so a lazy import cannot hide a loop or an upward edge.

Layers, bottom to top (the README's "layers"): errors and hashing; config; store; models and
data; math (pure tensor-in/tensor-out); stage actors and services; the driver (loop); faces.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "cropi"

ENGINES = ("ray", "deepspeed", "vllm")
# pure tensor-in/tensor-out: never a Ray, DeepSpeed or vLLM import
MATH = ("algo", "influence.trajectories", "influence.gradients", "influence.capture", "influence.coords", "influence.layout",
        "influence.objective", "influence.params", "influence.passes", "influence.projection", "selection.fusion",
        "selection.scoring", "selection.select", "selection.baselines", "compare.stats", "compare.hypotheses",
        "compare.summary")
# what each low layer may import of cropi (itself always)
ALLOWED_BELOW = {
    "errors": set(),
    "hashing": set(),
    "config": {"errors", "hashing"},
    "store": {"errors", "hashing", "config"},
}
FACES = ("cli", "entry", "compare")  # the only units that may import the driver


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    name = ".".join(rel.parts)
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def _imports() -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for f in ROOT.rglob("*.py"):
        mod = _module(f)
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names] if node.module == "cropi" else [])
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            out[mod].update(names)
    return out


def _unit(mod: str) -> str:
    """cropi.store.buffer -> store; cropi.loop -> loop."""
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "cropi"


def _unit_graph(imports: dict[str, set[str]]) -> dict[str, dict[str, list[str]]]:
    g: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for mod, names in imports.items():
        for n in names:
            if n.startswith("cropi.") and _unit(n) != _unit(mod):
                g[_unit(mod)][_unit(n)].append(f"{mod} -> {n}")
    return g


def _cycles(g: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Strongly connected components of more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in g.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_loop_between_packages():
    g = _unit_graph(_imports())
    loops = _cycles(g)
    detail = [e for comp in loops for a in comp for b in comp for e in g.get(a, {}).get(b, [])[:2]]
    assert not loops, f"import loops between {loops}: {detail}"


def test_the_checker_finds_a_loop():
    assert _cycles({"a": {"b": ["x"]}, "b": {"a": ["y"]}, "c": {"a": ["z"]}}) == [["a", "b"]]
    assert _cycles({"a": {"b": ["x"]}, "b": {}}) == []


def test_low_layers_import_nothing_above_them():
    g = _unit_graph(_imports())
    for unit, allowed in ALLOWED_BELOW.items():
        bad = {b: edges[:2] for b, edges in g.get(unit, {}).items() if b not in allowed}
        assert not bad, f"cropi.{unit} may import only {sorted(allowed) or 'nothing of cropi'}: {bad}"


def test_only_the_faces_import_the_driver():
    g = _unit_graph(_imports())
    bad = {a: g[a]["loop"][:2] for a in g if "loop" in g[a] and a not in FACES}
    assert not bad, bad


def test_math_modules_import_no_engine():
    imports = _imports()
    math = [m for m in imports if any(m == f"cropi.{p}" or m.startswith(f"cropi.{p}.") for p in MATH)]
    assert len(math) >= len(MATH)  # every listed module exists (a rename would skip it silently)
    bad = {m: sorted(n for n in imports[m] if n.split(".")[0] in ENGINES) for m in math}
    assert not {m: v for m, v in bad.items() if v}, bad
