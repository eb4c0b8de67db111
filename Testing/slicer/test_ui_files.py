"""The modules' Qt Designer files: every class exists in Slicer 5.10, no two items share a layout cell.

(That every widget name the module code uses exists in its .ui file is Testing/test_structure.py's
``test_widget_names_exist_in_ui``.)
"""

import json
from collections import defaultdict
from pathlib import Path

import pytest

from imagio.testing_slicer import MODULES, ui_cells, ui_classes

ROOT = Path(__file__).resolve().parents[2]
UI_FILES = sorted(ROOT.glob("IMAGIO*/Resources/UI/*.ui"))
CLASSES = json.loads((Path(__file__).with_name("slicer510_widget_classes.json")).read_text())


def test_every_module_has_a_ui_file():
    assert {p.parent.parent.parent.name for p in UI_FILES} == set(MODULES) - {"IMAGIOCommon"}


def test_the_class_list_names_its_sources():
    assert set(CLASSES["sources"]) == {"qt", "ctk", "slicer"}
    assert "v5.10.0" in CLASSES["sources"]["slicer"]
    # spot checks against what Slicer 5.10 is known to offer (and not to offer)
    assert {"qMRMLNodeComboBox", "qMRMLSegmentSelectorWidget", "qSlicerMarkupsPlaceWidget"} <= set(CLASSES["slicer"])
    assert {"ctkCollapsibleButton", "ctkSliderWidget", "ctkPathLineEdit"} <= set(CLASSES["ctk"])
    assert "QFormLayout" in CLASSES["qt"] and "qMRMLSegmentSelector" not in CLASSES["slicer"]


@pytest.mark.parametrize("ui", UI_FILES, ids=lambda p: p.name)
def test_every_widget_class_exists_in_slicer_510(ui):
    known = set(CLASSES["qt"]) | set(CLASSES["ctk"]) | set(CLASSES["slicer"])
    unknown = sorted(ui_classes(ui) - known)
    assert not unknown, f"{ui.name} uses classes Slicer 5.10 does not provide: {unknown}"


def _cells(ui):
    by_cell = defaultdict(list)
    for layout, row, col, name in ui_cells(ui):
        by_cell[(layout, row, col)].append(name)
    return {k: v for k, v in by_cell.items() if len(v) > 1}


@pytest.mark.parametrize("ui", UI_FILES, ids=lambda p: p.name)
def test_no_two_items_share_a_layout_cell(ui):
    shared = _cells(ui)
    assert not shared, f"{ui.name}: items placed in the same cell: {shared}"


def test_the_cell_check_sees_a_form_layout_overlap(tmp_path):
    """Qt's form builder puts any column > 0 in the field cell: column 2 collides with column 1."""
    ui = tmp_path / "x.ui"
    ui.write_text("""<ui version="4.0"><widget class="QWidget" name="w"><layout class="QFormLayout" name="f">
      <item row="0" column="0"><widget class="QLabel" name="a"/></item>
      <item row="0" column="1"><widget class="QLabel" name="b"/></item>
      <item row="0" column="2"><widget class="QLabel" name="c"/></item>
      <item row="1" column="0" colspan="2"><widget class="QLabel" name="d"/></item>
      <item row="2" column="0" colspan="2"><widget class="QLabel" name="e"/></item>
      <item row="2" column="1"><widget class="QLabel" name="g"/></item>
    </layout></widget></ui>""")
    assert _cells(ui) == {("f", 0, 1): ["b", "c"], ("f", 2, 1): ["e", "g"]}
