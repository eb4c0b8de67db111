"""IMAGIOMargin's Slicer side on Slicer 5.10's own framework (imagio.testing_slicer): segments are chosen by node and
segment ID in segment selectors (never by name or as "the node's first segment"), the registration is an Enum.

Every segmentation here holds a decoy first, named for its role ("tumour", "ablation zone", "planned zone"): picking
the first segment or by name would take the decoy, and the metrics tell the two apart (the decoys give another
margin and plan comparison).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from imagio import mrml
from imagio.errors import ImagioError
from imagio.io import Segment
from imagio.testing_slicer import SlicerHarness, reload_scene_xml
from IMAGIOMarginLib.logic import MarginLogic
from IMAGIOMarginLib.options import Registration

sys.path.insert(0, str(Path(__file__).parent))

from test_margin_logic import SPACING, ball, grid  # noqa: E402

CENTRE = np.array([45.0, 40.0, 25.0])
FAST = {"n_samples": 64, "seed": 1}  # MarginLogic.assess options: a short uncertainty run


@pytest.fixture(scope="module")
def masks():
    ref = grid()
    off = np.array([3.0 / SPACING[0], 0.0, 0.0])
    return {"tumor": ball(ref, CENTRE, 8.0), "tumor_decoy": ball(ref, CENTRE + np.array([20.0, 0.0, 0.0]), 6.0),
            "zone": ball(ref, CENTRE + off, 15.0), "zone_decoy": ball(ref, CENTRE, 9.0),
            "planned": ball(ref, CENTRE + off, 15.0), "planned_decoy": ball(ref, CENTRE, 30.0)}


@pytest.fixture
def harness():
    with SlicerHarness() as h:
        h.load_module("IMAGIOCommon")
        yield h


def _two_segment_nodes(scene, m, ct):
    """Tumour, zone and planned-zone nodes: first a decoy named for its role (what the first segment or a name
    lookup takes), then the segment to choose, named otherwise; the chosen segments' IDs."""
    nodes, ids = {}, {}
    for role, name in (("tumor", "tumour"), ("zone", "ablation zone"), ("planned", "planned zone")):
        node = mrml.segmentation_node_from_segments(
            scene, [Segment(name, m[f"{role}_decoy"]), Segment(f"{name} (reader 2)", m[role])], role.title(), ct)
        seg = node.GetSegmentation()
        assert seg.GetSegmentIdBySegmentName(name) == seg.GetNthSegmentID(0)
        nodes[role], ids[role] = node, seg.GetNthSegmentID(1)
    return nodes, ids


def _ct(scene, m):
    return mrml.volume_node_from_image(scene, sitk.Cast(m["zone"], sitk.sitkInt16) * 100, "CT")


def test_the_logic_picks_the_segments_by_id_on_a_slicer_core_scene(masks):
    """MarginLogic.assess_nodes on a plain slicer-core scene: the result is that of the chosen segments' masks,
    not of the decoys (first segment, and the segment a by-name lookup finds); unknown or empty IDs are refused."""
    from imagio.scene import new_scene

    scene = new_scene()
    ct = _ct(scene, masks)
    nodes, ids = _two_segment_nodes(scene, masks, ct)
    logic = MarginLogic(scene)
    got = logic.assess_nodes(nodes["tumor"], ids["tumor"], nodes["zone"], ids["zone"], ct, ct,
                             planned_zone_node=nodes["planned"], planned_zone_segment_id=ids["planned"], **FAST)
    want = logic.assess(masks["tumor"], masks["zone"], planned_zone=masks["planned"], **FAST).to_dict()
    decoy = logic.assess(masks["tumor_decoy"], masks["zone_decoy"], planned_zone=masks["planned_decoy"], **FAST)
    d = got.to_dict()
    assert d["minimal_margin_mm"] == pytest.approx(want["minimal_margin_mm"], abs=1e-6)
    assert d["coverage_percent"] == pytest.approx(want["coverage_percent"])
    assert d["minimal_margin_mm"] > 2.0 and decoy.to_dict()["minimal_margin_mm"] < 0.0  # they differ
    assert got.plan_vs_achieved.to_dict()["planned_not_ablated_ml"] == pytest.approx(
        want["plan_vs_achieved"]["planned_not_ablated_ml"], abs=1e-6)
    assert want["plan_vs_achieved"]["planned_not_ablated_ml"] < 0.1 < decoy.plan_vs_achieved.to_dict()[
        "planned_not_ablated_ml"]
    with pytest.raises(ImagioError, match="^The tumour segment 'no-such-id' is not in 'Tumor'") as e:
        logic.assess_nodes(nodes["tumor"], "no-such-id", nodes["zone"], ids["zone"])
    assert "\n" not in str(e.value)
    with pytest.raises(ImagioError, match="^No ablation zone segment chosen in 'Zone'"):
        logic.assess_nodes(nodes["tumor"], ids["tumor"], nodes["zone"], "")


def test_the_parameter_node_round_trips_the_registration_enum_and_the_segment_ids(harness, masks):
    import slicer

    mod = harness.import_module("IMAGIOMargin")
    harness.load_module("IMAGIOMargin")
    p = mod.IMAGIOMarginLogic().getParameterNode()
    assert p.registration is Registration.NONE and p.tumorSegmentID == "" and p.plannedZoneSegmentID == ""
    assert not hasattr(p, "tumorSegmentName")  # no typed names any more
    ct = _ct(slicer.mrmlScene, masks)
    nodes, ids = _two_segment_nodes(slicer.mrmlScene, masks, ct)
    p.tumorSegmentation, p.zoneSegmentation, p.plannedZoneSegmentation = nodes["tumor"], nodes["zone"], nodes["planned"]
    p.tumorSegmentID, p.zoneSegmentID, p.plannedZoneSegmentID = ids["tumor"], ids["zone"], ids["planned"]
    p.registration = Registration.DEFORMABLE
    with pytest.raises((TypeError, ValueError)):  # a plain string is not a value of the typed field
        p.registration = "rigid"
    saved = reload_scene_xml(slicer.mrmlScene)  # saved as MRML and read back (held: its nodes live in it)
    back = type(p)(saved.GetSingletonNode("IMAGIOMargin", "vtkMRMLScriptedModuleNode"))
    assert back.registration is Registration.DEFORMABLE and back.registration == "deformable"  # the CLI's word
    assert (back.tumorSegmentID, back.zoneSegmentID, back.plannedZoneSegmentID) == (ids["tumor"], ids["zone"],
                                                                                     ids["planned"])
    assert back.tumorSegmentation.GetID() == nodes["tumor"].GetID()
    from IMAGIOMarginLib.jobs import parameter_request

    args, options = parameter_request(p)
    assert args[:4] == (nodes["tumor"], ids["tumor"], nodes["zone"], ids["zone"])
    assert options["register_mode"] == "deformable" and type(options["register_mode"]) is str  # plain data to a job
    assert options["planned_zone_segment_id"] == ids["planned"]


def test_the_widget_chooses_segments_by_id_and_assesses_those(harness, masks):
    """The three segment selectors (node + segment) follow the parameter node both ways; Apply is enabled only
    with a segment chosen in each chosen node; Apply assesses the chosen segments (not the same-named decoys); a
    renamed segment stays chosen, a deleted one is dropped."""
    import slicer

    widget = harness.create_widget("IMAGIOMargin")
    ui, p, scene = widget.ui, widget._parameterNode, slicer.mrmlScene
    combo = ui.registrationComboBox
    assert [combo.itemText(i) for i in range(combo.count)] == ["none", "rigid", "deformable"]  # from the Enum
    combo.currentIndex = 1  # the user picks "rigid"
    assert p.registration is Registration.RIGID
    p.registration = Registration.NONE
    assert combo.currentText == "none"
    ct = _ct(scene, masks)
    nodes, ids = _two_segment_nodes(scene, masks, ct)
    assert not ui.applyButton.enabled
    for selector, role in ((ui.tumorSegmentSelector, "tumor"), (ui.zoneSegmentSelector, "zone")):
        selector.setCurrentNode(nodes[role])  # the user picks the node, then its segment
        assert not ui.applyButton.enabled  # a node without a chosen segment is not enough
        selector.setCurrentSegmentID(ids[role])
    assert (p.tumorSegmentation, p.tumorSegmentID) == (nodes["tumor"], ids["tumor"])
    assert (p.zoneSegmentation, p.zoneSegmentID) == (nodes["zone"], ids["zone"])
    assert ui.applyButton.enabled
    p.plannedZoneSegmentation = nodes["planned"]  # parameter node -> selector
    assert ui.plannedZoneSegmentSelector.currentNode() is nodes["planned"] and not ui.applyButton.enabled
    p.plannedZoneSegmentID = ids["planned"]
    assert ui.plannedZoneSegmentSelector.currentSegmentID() == ids["planned"] and ui.applyButton.enabled
    nodes["tumor"].GetSegmentation().GetSegment(ids["tumor"]).SetName("GTV (renamed)")
    result, added = widget.logic.process(p)
    want = MarginLogic(scene).assess(masks["tumor"], masks["zone"], planned_zone=masks["planned"]).to_dict()
    d = result.to_dict()
    assert d["minimal_margin_mm"] == pytest.approx(want["minimal_margin_mm"], abs=1e-6)
    assert d["coverage_percent"] == pytest.approx(want["coverage_percent"])
    assert added.plan_table is not None and p.resultsTable is added.table
    nodes["zone"].GetSegmentation().RemoveSegment(ids["zone"])  # the chosen segment is deleted
    widget.updateSegmentSelectors()
    assert p.zoneSegmentID == "" and not ui.applyButton.enabled  # dropped, not replaced by the decoy
    with pytest.raises(ImagioError, match="^No ablation zone segment chosen in 'Zone'"):
        widget.logic.process(p)
