"""IMAGIOPlanning's panel on Slicer 5.10's framework: ONNX Runtime offered with consent, bad model cards, old card paths.

ONNX Runtime is made missing the way Python sees a missing package (``sys.modules["onnxruntime"] = None``:
``find_spec`` answers None and ``import onnxruntime`` fails); the package installer is the one thing
replaced, by a recorder that checks it is called only after the user said yes, and that "installs" by
making the real package visible again. The 5.12 installer's stand-in has the signature of
``slicer.packaging.pip_ensure`` in Slicer v5.12.0 (Base/Python/slicer/packaging.py, lines 329-338).
"""

import inspect
import json
import shutil
import sys
import tomllib
import types
from pathlib import Path

import pytest
import slicer

from imagio.testing_slicer import QMessageBox, SlicerHarness

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CARD = ROOT / "IMAGIOCommon" / "imagio" / "models" / "phantom_lesions" / "phantom_lesions.json"

P = inspect.Parameter
PIP_ENSURE_512 = inspect.Signature([
    P("requirements", P.POSITIONAL_OR_KEYWORD), P("constraints", P.POSITIONAL_OR_KEYWORD, default=None),
    P("skip_packages", P.POSITIONAL_OR_KEYWORD, default=None), P("prompt_install", P.POSITIONAL_OR_KEYWORD, default=True),
    P("prompt_restart", P.POSITIONAL_OR_KEYWORD, default=True), P("requester", P.POSITIONAL_OR_KEYWORD, default=None),
    P("skip_in_testing", P.POSITIONAL_OR_KEYWORD, default=True), P("show_progress", P.POSITIONAL_OR_KEYWORD, default=True)])


@pytest.fixture
def gui_app():
    """Slicer with its main window (not in testing mode): dialogs are shown and answered by the test."""
    with SlicerHarness(testing=False) as h:
        h.show_main_window()
        h.load_module("IMAGIOCommon")
        yield h


class Installer:
    """Records install calls; each must come after the user's yes; it makes the real onnxruntime visible."""

    def __init__(self, harness, monkeypatch):
        self.harness, self.monkeypatch, self.calls = harness, monkeypatch, []

    def __call__(self, *args, **kwargs):
        assert self.harness.dialogs, "installed before asking"
        self.calls.append((args, kwargs))
        self.monkeypatch.delitem(sys.modules, "onnxruntime")


@pytest.fixture
def no_onnxruntime(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)


def test_requirements_are_onnxruntime_only_as_pyproject_pins_it():
    mod = SlicerHarness().start()
    try:
        planning = mod.import_module("IMAGIOPlanning")
        packages = planning.requiredPackages()
    finally:
        mod.stop()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert packages == [d for d in deps if d.startswith("onnxruntime")] == ["onnxruntime>=1.17"]
    assert not any(p.startswith(("slicer", "imagio")) for p in packages)


def test_onnxruntime_missing_is_offered_and_nothing_installed_when_declined(gui_app, no_onnxruntime, monkeypatch):
    installer = Installer(gui_app, monkeypatch)
    monkeypatch.setattr(slicer.util, "pip_install", installer)
    widget = gui_app.create_widget("IMAGIOPlanning")
    gui_app.answer_dialogs(QMessageBox.Cancel)
    widget.onApplyButton()
    (dialog,) = gui_app.dialogs
    assert "onnxruntime>=1.17" in dialog["text"] and "install" in dialog["title"].lower()
    assert installer.calls == []
    assert widget._job is None and widget.ui.applyButton.text == "Apply"
    assert "nothing was installed" in widget.ui.resultLabel.text
    with pytest.raises(ImportError):
        import onnxruntime  # noqa: F401


def test_accepted_on_slicer_510_installs_the_requirements_file(gui_app, no_onnxruntime, monkeypatch):
    installer = Installer(gui_app, monkeypatch)
    monkeypatch.setattr(slicer.util, "pip_install", installer)
    planning = gui_app.import_module("IMAGIOPlanning")
    gui_app.answer_dialogs(QMessageBox.Ok)
    ready, message = planning.offerOnnxRuntime()
    assert ready and message == "ONNX Runtime installed."
    assert installer.calls == [((["-r", str(ROOT / "IMAGIOPlanning" / "Resources" / "requirements.txt")],), {})]
    assert gui_app.cursor_depth == 0
    import onnxruntime  # the worker process imports it from the same site-packages

    assert onnxruntime.InferenceSession


def test_accepted_on_slicer_512_uses_pip_ensure(monkeypatch, no_onnxruntime):
    with SlicerHarness(version=(5, 12, 2), testing=False) as h:
        h.show_main_window()
        installer = Installer(h, monkeypatch)

        def pip_ensure(*args, **kwargs):
            PIP_ENSURE_512.bind(*args, **kwargs)  # TypeError on a parameter 5.12 does not have
            installer(*args, **kwargs)

        monkeypatch.setitem(sys.modules, "slicer.packaging", types.SimpleNamespace(pip_ensure=pip_ensure))
        monkeypatch.setattr(slicer.util, "pip_install", lambda *a: pytest.fail("5.12 installs through pip_ensure"))
        planning = h.import_module("IMAGIOPlanning")
        h.answer_dialogs(QMessageBox.Ok)
        ready, _ = planning.offerOnnxRuntime()
        assert ready
        (call,) = installer.calls
        assert call == ((["onnxruntime>=1.17"],), {"prompt_install": False, "requester": "IMAGIO Planning"})


def test_testing_mode_never_installs(slicer_app, no_onnxruntime, monkeypatch):
    monkeypatch.setattr(slicer.util, "pip_install", lambda *a: pytest.fail("installed in testing mode"))
    planning = slicer_app.import_module("IMAGIOPlanning")
    ready, message = planning.offerOnnxRuntime()
    assert not ready and "testing mode" in message
    assert slicer_app.dialogs == []


def _bad_cards(tmp_path: Path) -> dict:
    binary = tmp_path / "binary"
    binary.mkdir()
    (binary / "weights.json").write_bytes(bytes(range(256)) * 4)
    not_json = tmp_path / "not_json.json"
    not_json.write_text("{ labels: [")
    card = json.loads(SHIPPED_CARD.read_text())
    del card["labels"]
    no_labels = tmp_path / "no_labels.json"
    no_labels.write_text(json.dumps(card))
    card = json.loads(SHIPPED_CARD.read_text())
    card["labels"][1] = {k: v for k, v in card["labels"][1].items() if k != "name"}
    bad_label = tmp_path / "bad_label.json"
    bad_label.write_text(json.dumps(card))
    return {"a folder with a binary .json": (binary, "must hold exactly one model card, found none"), "not JSON": (not_json, "not readable JSON"),
            "no labels": (no_labels, "labels"), "a label without a name": (bad_label, "labels"),
            "missing": (tmp_path / "gone.json", "does not exist")}


def test_a_bad_model_card_is_a_reason_in_the_panel_not_an_exception(slicer_app, tmp_path, monkeypatch):
    widget = slicer_app.create_widget("IMAGIOPlanning")
    p = widget._parameterNode
    assert widget.ui.modelInfoLabel.text.startswith("phantom-lesions: Liver tumor, Lung nodule")
    for what, (path, reason) in _bad_cards(tmp_path).items():
        p.modelCardPath = path  # the parameter node's observer updates the panel
        assert reason in widget.ui.modelInfoLabel.text, what
        assert not widget.ui.applyButton.enabled, what
    monkeypatch.chdir(tmp_path / "binary")  # an empty path is not the working folder's cards
    p.modelCardPath = Path("")
    assert "No model card selected" in widget.ui.modelInfoLabel.text
    p.modelCardPath = SHIPPED_CARD
    assert widget.ui.modelInfoLabel.text.startswith("phantom-lesions")


def test_a_saved_card_path_that_no_longer_exists_falls_back_to_the_shipped_card(slicer_app, tmp_path):
    planning = slicer_app.import_module("IMAGIOPlanning")
    old = tmp_path / "Slicer-5.10.0" / "extensions" / "IMAGIO" / "phantom_lesions.json"  # an earlier install
    p = planning.IMAGIOPlanningLogic().getParameterNode()
    p.modelCardPath = old
    widget = slicer_app.create_widget("IMAGIOPlanning")
    assert Path(widget._parameterNode.modelCardPath) == SHIPPED_CARD
    note = widget.ui.modelInfoLabel.text
    assert f"The saved model card {old} no longer exists" in note and "phantom-lesions" in note
    mine = tmp_path / "mine"  # the user picks another card: the note goes
    mine.mkdir()
    for f in SHIPPED_CARD.parent.iterdir():
        shutil.copy(f, mine / f.name)
    widget._parameterNode.modelCardPath = mine / SHIPPED_CARD.name
    assert "no longer exists" not in widget.ui.modelInfoLabel.text


def test_a_saved_card_path_that_exists_is_kept(slicer_app, tmp_path):
    planning = slicer_app.import_module("IMAGIOPlanning")
    for f in SHIPPED_CARD.parent.iterdir():
        shutil.copy(f, tmp_path / f.name)
    p = planning.IMAGIOPlanningLogic().getParameterNode()
    p.modelCardPath = tmp_path / SHIPPED_CARD.name
    widget = slicer_app.create_widget("IMAGIOPlanning")
    assert Path(widget._parameterNode.modelCardPath) == tmp_path / SHIPPED_CARD.name
    assert "no longer exists" not in widget.ui.modelInfoLabel.text


def test_self_test_does_not_run_the_model_without_onnxruntime(slicer_app, no_onnxruntime, caplog):
    """The extension build servers' Slicer has no onnxruntime: the model part says so instead of failing."""
    import logging

    planning = slicer_app.import_module("IMAGIOPlanning")
    test = planning.IMAGIOPlanningTest()
    with caplog.at_level(logging.INFO):
        test.test_model_in_background()
    assert "ONNX Runtime is not installed: the background model test is not run" in caplog.text
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
