"""Function-local imports follow one rule (DEVELOPERS.md, "Imports"; issue 16, item 8).

An ``import`` inside a function is allowed only for:

* an optional package (``OPTIONAL``: extras such as openvino, highdicom, dask; matplotlib for reports;
  pytest in the test helpers) or a platform-only standard module (``PLATFORM``);
* a heavy package (``HEAVY``: vtk, scipy, onnxruntime, pydicom, Slicer and its Qt), or a project module that
  imports one at its top (found here by walking the project's top-level imports);
* in a start-up module (a module ``imagio --help`` loads, found here by running it, or one the Slicer module
  files import at their top, so Slicer loads it when the application starts): numpy, SimpleITK, and any project
  module outside the start-up set or that loads those, so ``--help``, argument errors and Slicer's start-up
  stay fast;
* an import that would make an import cycle at the module's top (the imported module already imports this
  one, directly or through others, at import time).

Everything else (the standard library, numpy, SimpleITK, the project's light modules) is imported at the top.
The Slicer-side files are exempt: the module files ``IMAGIO*/IMAGIO*.py`` (Slicer evaluates their top at
application start-up, so they import their Lib where it is used, as ../shared/STYLE.md asks) and
``imagio/slicer_widget.py`` (Slicer-only code, imported by those module files).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"imagio": ROOT / "IMAGIOCommon" / "imagio"}
PACKAGES.update({p.name: p for p in sorted(ROOT.glob("IMAGIO*/IMAGIO*Lib")) if p.is_dir()})
EXEMPT = {ROOT / "IMAGIOCommon" / "imagio" / "slicer_widget.py"}

OPTIONAL = {"openvino", "highdicom", "dask", "distributed", "torch", "nnunetv2", "pandas", "matplotlib",
            "skimage", "onnx", "pytest", "tqdm", "blosc2", "threadpoolctl", "nibabel", "skan"}
HEAVY = {"vtk", "vtkmodules", "scipy", "onnxruntime", "pydicom", "slicer", "qt", "ctk", "SampleData"}
PLATFORM = {"fcntl", "msvcrt", "winreg"}


def package_files() -> list[Path]:
    return sorted(p for folder in PACKAGES.values() for p in folder.rglob("*.py") if p not in EXEMPT)


def module_name(path: Path) -> str:
    for pkg, folder in PACKAGES.items():
        if path.is_relative_to(folder):
            parts = [pkg, *path.relative_to(folder).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise ValueError(path)


@cache
def project_modules() -> frozenset[str]:
    return frozenset(module_name(p) for folder in PACKAGES.values() for p in folder.rglob("*.py"))


def imported_modules(node: ast.Import | ast.ImportFrom, name: str, is_package: bool) -> list[str]:
    """Absolute names of the modules an import statement in module ``name`` loads (``from a import b``: a.b when
    that is a project module, else a)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        up = (name if is_package else name.rpartition(".")[0]).split(".")
        up = up[:len(up) - (node.level - 1)]
        base = ".".join(up + ([base] if base else []))
    subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in project_modules()]
    return subs if len(subs) == len(node.names) else [base, *subs]


def _top_level_nodes(tree: ast.Module):
    """The import statements that run when the module is imported (not in functions or classes' methods)."""
    stack = list(tree.body)
    while stack:
        n = stack.pop()
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(n, ast.If) and isinstance(n.test, ast.Name) and n.test.id == "TYPE_CHECKING":
            continue
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            yield n
        stack.extend(ast.iter_child_nodes(n))


@cache
def top_imports() -> dict[str, frozenset[str]]:
    """Module -> every module (project or not) it imports at its top."""
    out = {}
    for folder in PACKAGES.values():
        for p in folder.rglob("*.py"):
            name = module_name(p)
            found = set()
            for n in _top_level_nodes(ast.parse(p.read_text())):
                found.update(imported_modules(n, name, p.name == "__init__.py"))
            out[name] = frozenset(found)
    return out


def _closure(name: str) -> set[str]:
    """Every module imported (transitively, at module top) when ``name`` is imported, including its packages."""
    seen, todo = set(), [name]
    while todo:
        m = todo.pop()
        parts = m.split(".")
        for i in range(1, len(parts) + 1):
            sub = ".".join(parts[:i])
            if sub not in seen:
                seen.add(sub)
                todo.extend(top_imports().get(sub, ()))
    return seen


def is_heavy(module: str) -> bool:
    return any(m.split(".")[0] in HEAVY | OPTIONAL for m in _closure(module))


def slicer_startup_modules() -> set[str]:
    """The project modules Slicer imports at application start-up: the module files' top-level imports, and theirs."""
    out = set()
    for path in sorted(ROOT.glob("IMAGIO*/IMAGIO*.py")):
        for n in _top_level_nodes(ast.parse(path.read_text())):
            for m in imported_modules(n, path.stem, False):
                if m in project_modules():
                    out |= {c for c in _closure(m) if c in project_modules()}
    return out


@cache
def startup_modules() -> frozenset[str]:
    """The project modules loaded at start-up: those ``imagio --help`` loads (every subcommand's parser is built),
    and those Slicer loads with the module files (:func:`slicer_startup_modules`)."""
    code = ("import sys, runpy\nsys.argv = ['imagio', '--help']\ntry:\n"
            "    runpy.run_module('imagio.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('MODULES', ' '.join(sorted(sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("MODULES ")]
    assert line, r.stdout[-500:] + r.stderr[-2000:]
    cli = {m for m in line[-1].split()[1:] if m in project_modules()} | {"imagio.cli"}
    return frozenset(cli | slicer_startup_modules())


def costly_at_startup(module: str) -> bool:
    """A project module outside the start-up set, or one that loads numpy, SimpleITK or a heavy package."""
    return module not in startup_modules() or any(
        m.split(".")[0] in HEAVY | OPTIONAL | {"numpy", "SimpleITK"} for m in _closure(module))


def why_allowed(module: str, where: str) -> str | None:
    """The rule that allows importing ``module`` inside a function of project module ``where`` (None: none)."""
    top = module.split(".")[0]
    if top in OPTIONAL:
        return "optional"
    if top in PLATFORM:
        return "platform"
    if top in HEAVY:
        return "heavy"
    project = module in project_modules()
    if project and where in _closure(module):
        return "cycle"
    if where in startup_modules() and (top in ("numpy", "SimpleITK") or (project and costly_at_startup(module))):
        return "start-up"
    if project and is_heavy(module):
        return "heavy"
    return None


def local_imports(path: Path):
    """(line, statement, module) of every import statement inside a function of ``path``."""
    tree = ast.parse(path.read_text())
    name, is_package = module_name(path), path.name == "__init__.py"

    def visit(node, in_function):
        for ch in ast.iter_child_nodes(node):
            if isinstance(ch, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from visit(ch, True)
            elif isinstance(ch, (ast.Import, ast.ImportFrom)):
                if in_function:
                    for m in imported_modules(ch, name, is_package):
                        yield ch.lineno, ch, m
            else:
                yield from visit(ch, in_function)

    yield from visit(tree, False)


def test_the_rule_sees_the_start_up_set_and_the_heavy_modules():
    start = startup_modules()
    assert {"imagio.cli", "imagio.cli_utils", "IMAGIOMarginLib.cli"} <= start
    assert "imagio.io" not in start and "imagio.mrml" not in start
    assert is_heavy("imagio.mrml") and not is_heavy("imagio.geometry")
    assert why_allowed("numpy", "imagio.cli_utils") == "start-up" and why_allowed("numpy", "imagio.io") is None
    assert why_allowed("json", "imagio.cli") is None and why_allowed("highdicom", "imagio.geometry") == "optional"


def test_function_local_imports_are_only_of_what_the_rule_allows():
    bad, count = [], 0
    for path in package_files():
        where = module_name(path)
        for line, _node, module in local_imports(path):
            count += 1
            if why_allowed(module, where) is None:
                bad.append(f"{path.relative_to(ROOT)}:{line}: import of {module} inside a function")
    assert count > 0  # the walk is real
    assert not bad, ("Import these at the module top (DEVELOPERS.md, Imports), or add the package to OPTIONAL / "
                     "HEAVY with a reason:\n" + "\n".join(bad))
