"""Import hygiene of the shared core and the module libraries (issue 16, item 8): no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = {"imagio": ROOT / "IMAGIOCommon" / "imagio"}
PACKAGES.update({p.name: p for p in sorted(ROOT.glob("IMAGIO*/IMAGIO*Lib")) if p.is_dir()})


def _module_name(path: Path) -> str:
    for pkg, folder in PACKAGES.items():
        if path.is_relative_to(folder):
            rel = path.relative_to(folder).with_suffix("")
            parts = [pkg, *rel.parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise ValueError(path)


def _top_level_imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports when it is imported (module level, not inside functions)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text())
    for node in tree.body:  # what runs at import time: the module body (and if/try blocks in it)
        stack = [node]
        while stack:
            n = stack.pop()
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                continue
            if isinstance(n, ast.If) and isinstance(n.test, ast.Name) and n.test.id == "TYPE_CHECKING":
                continue
            if isinstance(n, ast.Import):
                found.update(a.name for a in n.names)
            elif isinstance(n, ast.ImportFrom):
                base = n.module or ""
                if n.level:
                    up = package.split(".")
                    up = up[:len(up) - (n.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                found.add(base)
                found.update(f"{base}.{a.name}" for a in n.names)  # `from pkg import module`
            stack.extend(ast.iter_child_nodes(n))
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = [p for folder in PACKAGES.values() for p in folder.glob("*.py")]
    modules = {_module_name(p) for p in paths}
    return {_module_name(p): _top_level_imports(p, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` ([a, b, ..., a]), or [] when there is none."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> list[str]:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        path.pop()
        state[m] = 2
        return []

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return []


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_import_cycle_in_the_core_and_the_module_libraries():
    graph = import_graph()
    assert {"imagio.io", "imagio.mrml", "imagio.jobs", "IMAGIOLungNavLib.logic"} <= set(graph)
    assert "imagio.io" in graph["imagio.mrml"]  # the graph is real: mrml builds on io
    assert find_cycle(graph) == []
