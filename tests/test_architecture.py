"""One stage, one module, one direction (docs/architecture.md): no import cycles inside the package.

Every ``import`` and ``from ... import`` of a ``deephealth`` module is counted, including those
inside functions (a lazy import is still a dependency). ``from package import submodule`` counts as
a dependency on the submodule, not on the package's ``__init__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "deephealth"


def _modules() -> dict[str, Path]:
    mods = {}
    for f in SRC.rglob("*.py"):
        rel = f.relative_to(SRC.parent).with_suffix("")
        if "migrations" in rel.parts or "models" in rel.parts[1:2]:
            continue
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        mods[".".join(parts)] = f
    return mods


def import_graph() -> dict[str, set[str]]:
    """Module name -> the ``deephealth`` modules it imports (anywhere in its source)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("deephealth"):
                subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in mods]
                deps.update(subs if subs else [node.module])
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("deephealth"))
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, 1972)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_known_cycle() -> None:
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_package_has_no_import_cycles() -> None:
    graph = import_graph()
    assert "deephealth.readers.dicom" in graph and "deephealth.training.imagenet" in graph
    assert cycles(graph) == []


def test_readers_and_training_import_one_way() -> None:
    graph = import_graph()
    assert "deephealth.readers.dicom" in graph["deephealth.readers.image"]
    assert "deephealth.readers.image" not in graph["deephealth.readers.dicom"]
    assert graph["deephealth.readers.types"] == set()
    assert "deephealth.training.imagenet" in graph["deephealth.training.model"]
    assert "deephealth.training.model" not in graph["deephealth.training.imagenet"]


def test_rendering_comes_after_inference() -> None:
    graph = import_graph()
    assert "deephealth.inference" in graph["deephealth.rendering"]
    assert "deephealth.rendering" not in graph["deephealth.inference"]
    for user in ("deephealth.web.routes", "deephealth.dicom_output", "deephealth.cli.predict"):
        assert "deephealth.rendering" in graph[user], user
