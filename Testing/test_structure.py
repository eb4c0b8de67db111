"""The extension's structure: modules, CMake lists, .ui widget names, Slicer classes."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["IMAGIOPlanning", "IMAGIOAblationZone", "IMAGIOLungNav", "IMAGIOMargin"]
ALL = ["IMAGIOCommon", *MODULES]


def _cmake_scripts(module: str) -> set[str]:
    text = (ROOT / module / "CMakeLists.txt").read_text()
    m = re.search(r"set\(MODULE_PYTHON_SCRIPTS(.*?)\)", text, re.S)
    assert m, f"{module}/CMakeLists.txt has no MODULE_PYTHON_SCRIPTS"
    return {t.replace("${MODULE_NAME}", module) for t in m.group(1).split()}


@pytest.mark.parametrize("module", ALL)
def test_every_python_file_is_listed_in_cmake(module):
    folder = ROOT / module
    files = {f"{module}.py"}
    lib = folder / (f"{module}Lib" if module != "IMAGIOCommon" else "imagio")
    files |= {str(p.relative_to(folder)) for p in lib.rglob("*.py")}
    listed = _cmake_scripts(module)
    missing = sorted(files - listed)
    assert not missing, f"{module}/CMakeLists.txt does not list {missing}: Slicer would drop them"
    stale = sorted(f for f in listed if not (folder / f).exists())
    assert not stale, f"{module}/CMakeLists.txt lists missing files {stale}"


def test_top_level_cmake_adds_every_module():
    text = (ROOT / "CMakeLists.txt").read_text()
    for module in ALL:
        assert f"add_subdirectory({module})" in text


@pytest.mark.parametrize("module", MODULES)
def test_module_file_has_slicer_classes(module):
    src = (ROOT / module / f"{module}.py").read_text()
    tree = ast.parse(src)
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    for suffix in ("", "Widget", "Logic", "Test"):
        assert f"{module}{suffix}" in classes, f"{module}.py lacks class {module}{suffix}"
    logic = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{module}Logic")
    # a ScriptedLoadableModuleLogic; the only mixin allowed is the shared DICOM export (imagio.dicom_export)
    assert [ast.unparse(b) for b in logic.bases] in (["ScriptedLoadableModuleLogic"], [
        "DicomExportLogicMixin", "ScriptedLoadableModuleLogic"]), f"{module}Logic's bases"
    # the Slicer Logic is an adapter: the computation lives in <Module>Lib.logic, which it imports
    lib_imports = {n.module for n in ast.walk(logic) if isinstance(n, ast.ImportFrom)}
    assert f"{module}Lib.logic" in lib_imports | _top_level_imports(tree), f"{module}Logic does not use {module}Lib.logic"


def _top_level_imports(tree) -> set[str]:
    return {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}


#: "Slicer Logic adapters thin (tens of lines)" (issue 16): the Logic class in <Module>.py, in lines
ADAPTER_MAX_LINES = 60


@pytest.mark.parametrize("module", [
    "IMAGIOPlanning",
    "IMAGIOAblationZone",
    "IMAGIOLungNav",
    "IMAGIOMargin",
])
def test_slicer_logic_adapter_is_thin(module):
    tree = ast.parse((ROOT / module / f"{module}.py").read_text())
    logic = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{module}Logic")
    lines = logic.end_lineno - logic.lineno + 1
    assert lines <= ADAPTER_MAX_LINES, f"{module}Logic is {lines} lines; move the work into {module}Lib.logic"


@pytest.mark.parametrize("module", MODULES)
def test_widget_names_exist_in_ui(module):
    src = (ROOT / module / f"{module}.py").read_text()
    ui_file = ROOT / module / "Resources" / "UI" / f"{module}.ui"
    assert ui_file.exists(), f"{ui_file} is missing"
    ui = ui_file.read_text()
    declared = set(re.findall(r'<widget[^>]*\sname="([^"]+)"', ui)) | set(re.findall(r'<action[^>]*\sname="([^"]+)"', ui))
    used = set(re.findall(r"\bui\.([A-Za-z_]\w*)", src))
    assert used, f"{module}.py uses no widget from its .ui"
    missing = sorted(used - declared)
    assert not missing, f"{module}.py uses widgets that {ui_file.name} does not declare: {missing}"
    # the shared widget mixins (imagio.slicer_widget) the module's Widget derives from use widgets of its .ui too
    widget = next(n for n in ast.parse(src).body if isinstance(n, ast.ClassDef) and n.name == f"{module}Widget")
    bases = {ast.unparse(b) for b in widget.bases}
    for mixin, names in _mixin_widget_names().items():
        if mixin in bases:
            missing = sorted(names - declared)
            assert not missing, f"{module}Widget derives from {mixin}, which uses widgets {ui_file.name} lacks: {missing}"


def _mixin_widget_names() -> dict[str, set[str]]:
    """The ``ui.X`` names each class of imagio/slicer_widget.py uses."""
    path = ROOT / "IMAGIOCommon" / "imagio" / "slicer_widget.py"
    src = path.read_text()
    out = {}
    for node in ast.parse(src).body:
        if isinstance(node, ast.ClassDef):
            out[node.name] = set(re.findall(r"\bui\.([A-Za-z_]\w*)", ast.get_source_segment(src, node)))
    assert out["DicomExportWidgetMixin"] >= {"exportCTSelector", "exportDicomButton"}  # the scan sees them
    return out


@pytest.mark.parametrize("module", MODULES)
def test_module_resources_exist(module):
    assert (ROOT / module / "Resources" / "Icons" / f"{module}.png").stat().st_size > 100
    assert (ROOT / module / f"{module}Lib" / "logic.py").exists()
    assert (ROOT / module / f"{module}Lib" / "cli.py").exists()
    assert (ROOT / module / f"{module}Lib" / "demo.py").exists()


def _gui_imports(tree: ast.AST) -> list[str]:
    """What a module imports of Qt, CTK, PythonQt or Slicer's scripted-module framework, and its uses of the
    global ``slicer.mrmlScene`` (every import form: ``import qt``, ``from ctk import X``,
    ``from slicer import ScriptedLoadableModule``, ``from slicer.ScriptedLoadableModule import X``)."""
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.split(".")[0] in ("qt", "ctk", "PythonQt") or name == "slicer.ScriptedLoadableModule" \
                    or name.startswith("slicer.ScriptedLoadableModule."):
                found.append(name)
        if isinstance(node, ast.Attribute) and node.attr == "mrmlScene":
            found.append("slicer.mrmlScene")
    return sorted(set(found))


def test_gui_import_check_finds_every_form():
    """The check below can fail: each forbidden form in a snippet is found, plain MRML use is not."""
    bad = ("import qt\nfrom ctk import ctkCollapsibleButton\nimport PythonQt.QtGui\n"
           "from slicer import ScriptedLoadableModule\nfrom slicer.ScriptedLoadableModule import X\n"
           "s = slicer.mrmlScene\n")
    assert _gui_imports(ast.parse(bad)) == ["PythonQt.QtGui", "ctk", "ctk.ctkCollapsibleButton", "qt",
                                            "slicer.ScriptedLoadableModule", "slicer.ScriptedLoadableModule.X",
                                            "slicer.mrmlScene"]
    assert _gui_imports(ast.parse("import slicer\nfrom slicer import vtkMRMLScene\nscene.AddNode(n)\n")) == []


@pytest.mark.parametrize("module", MODULES)
def test_logic_libraries_never_import_qt(module):
    """IMAGIO<Step>Lib never imports Qt/CTK/the scripted-module framework nor uses the global scene."""
    offending = {str(p.relative_to(ROOT)): found for p in (ROOT / module / f"{module}Lib").rglob("*.py")
                 if (found := _gui_imports(ast.parse(p.read_text())))}
    assert offending == {}, "take the scene as an argument; no Qt in the Lib"
