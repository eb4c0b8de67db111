"""Every IMAGIO module file on Slicer 5.10's own scripted-module framework (see README.md here).

For each module: the Module class instantiates as Slicer does it; the typed parameter node is created
on a real scene, every field written, saved to MRML (XML) and read back; the Widget is set up from its
.ui file and its widgets follow the parameter node both ways; its self-test (the
ScriptedLoadableModuleTest class Slicer's build servers run) passes on a real scene; the widget
leaves no observer behind when the scene closes or the module is unloaded.

A known defect in a module that its owner has not fixed yet is an ``xfail(strict=True)`` naming the
owner: it turns into a failure the day the defect is gone, so the mark is then removed.
"""

import re
from pathlib import Path

import pytest
import slicer

from imagio.testing_slicer import MODULES, framework_dir, reload_scene_xml, same_value, sample_value

ROOT = Path(__file__).resolve().parents[2]
STEPS = [m for m in MODULES if m != "IMAGIOCommon"]


def known_defect(owner: str, what: str):
    return pytest.mark.xfail(strict=True, reason=f"{owner}: {what} (BOARD request)")


def test_the_framework_is_slicer_510_and_only_qt_is_a_stand_in(slicer_app):
    """Guard: what runs is the real framework; only qt/ctk/PythonQt classes come from the stand-ins."""
    import ctk
    import qt
    import slicer.parameterNodeWrapper
    import slicer.ScriptedLoadableModule

    fw = framework_dir().resolve()
    for mod in (slicer.ScriptedLoadableModule, slicer.parameterNodeWrapper, slicer.util, slicer.i18n):
        assert Path(mod.__file__).resolve().is_relative_to(fw), mod.__file__
    assert "c01481fbbb08720d6c8587691006a6c0f4865dce" in (fw.parent / "README.md").read_text()
    assert qt.IMAGIO_STANDIN and ctk.IMAGIO_STANDIN
    assert type(slicer.mrmlScene).__module__.startswith(("MRMLCore", "slicer"))  # slicer-core's real scene
    assert slicer.mrmlScene.GetNodeByID("vtkMRMLColorTableNodeLabels") is not None  # default colour tables


@pytest.mark.parametrize("name", MODULES)
def test_module_class_instantiates(slicer_app, name):
    slicer_app.load_module(name)
    parent = getattr(slicer.modules, name.lower())
    assert parent.title.startswith("IMAGIO")
    assert parent.categories == ["IGT.IMAGIO"]  # test_extension_metadata.py: under the extension category
    assert "<a href=" in parent.helpText
    assert name in slicer.selfTests
    if name != "IMAGIOCommon":
        assert parent.dependencies == ["IMAGIOCommon"]
        assert parent.icon is not None and not parent.icon.isNull()


CONTRIBUTOR = re.compile(r"^[^()]+ \([^()]+\)$")


@pytest.mark.parametrize("name", MODULES)
def test_contributors_are_name_and_organization(slicer_app, name):
    slicer_app.load_module(name)
    contributors = getattr(slicer.modules, name.lower()).contributors
    assert contributors and all(CONTRIBUTOR.match(c) for c in contributors), contributors


@pytest.mark.parametrize("name", STEPS)
def test_parameter_node_round_trip_through_mrml(slicer_app, name):
    """Every field written on a real vtkMRMLScriptedModuleNode, saved as MRML XML, read back equal."""
    mod = slicer_app.import_module(name)
    slicer_app.load_module(name)
    logic = getattr(mod, f"{name}Logic")()
    p = logic.getParameterNode()
    cls = type(p)
    assert p.parameterNode.IsA("vtkMRMLScriptedModuleNode")
    assert p.parameterNode.GetAttribute("ModuleName") == name
    written = {}
    for field in cls.allParameters:
        value = sample_value(cls.dataType(field), slicer.mrmlScene, p.getValue(field))
        setattr(p, field, value)
        written[field] = value
        assert same_value(getattr(p, field), value), field
    other = reload_scene_xml(slicer.mrmlScene)
    back = cls(other.GetSingletonNode(name, "vtkMRMLScriptedModuleNode"))
    for field, value in written.items():
        assert same_value(back.getValue(field), value), f"{field}: wrote {value!r}, read {back.getValue(field)!r}"


@pytest.mark.parametrize("name", [
    "IMAGIOPlanning",
    "IMAGIOAblationZone",
    "IMAGIOLungNav",
    "IMAGIOMargin",
])
def test_widget_sets_up_and_follows_the_parameter_node(slicer_app, name):
    """setup() from the .ui; every SlicerParameterName widget is bound, both ways."""
    widget = slicer_app.create_widget(name)
    p = widget._parameterNode
    assert p is not None
    bound = {n: c for gui in p._parameterGUIs.values() for n, c in gui.items()}
    declared = {w.property("SlicerParameterName") for w in widget.ui.__dict__.values()
                if hasattr(w, "property") and w.property("SlicerParameterName")}
    assert declared and set(bound) == declared
    for field, connector in bound.items():
        value = sample_value(type(p).dataType(field), slicer.mrmlScene, p.getValue(field))
        setattr(p, field, value)  # parameter -> widget
        assert same_value(connector.read(), value), field
        other = sample_value(type(p).dataType(field), slicer.mrmlScene, value)
        connector.write(other)  # the user changes the widget -> parameter
        assert same_value(p.getValue(field), other), field


@pytest.mark.parametrize("name", MODULES)
def test_self_test_passes_on_the_framework(slicer_app, name):
    """The module's ScriptedLoadableModuleTest, as Slicer's SelfTests module runs it (runTest).

    Every module registers one (ScriptedLoadableModule does it): one without a Test class fails here."""
    slicer_app.load_module(name)
    slicer.selfTests[name](msec=0)


@pytest.mark.parametrize("name", STEPS)
def test_widget_keeps_no_observer_after_unload(slicer_app, name):
    widget = slicer_app.create_widget(name)
    slicer_app.unload_module(name)
    assert widget.Observations == []


@pytest.mark.parametrize("name", [
    "IMAGIOPlanning",
    "IMAGIOAblationZone",
    "IMAGIOLungNav",
    "IMAGIOMargin",
])
def test_widget_observes_only_the_scene_after_scene_close(slicer_app, name):
    """After File > Close Scene nothing of the old scene is observed (no recomputation outside the module)."""
    widget = slicer_app.create_widget(name)
    logic = widget.logic
    p = logic.getParameterNode()
    for field in type(p).allParameters:  # fill every field, as a user would before closing
        setattr(p, field, sample_value(type(p).dataType(field), slicer.mrmlScene, p.getValue(field)))
    slicer.mrmlScene.Clear()
    param = widget._parameterNode
    leftover = [(getattr(obj, "parameterNode", obj).GetClassName(), event) for obj, event, *_ in widget.Observations
                if obj is not slicer.mrmlScene and obj is not param]
    assert leftover == []
