"""The Slicer module on Slicer 5.10's own framework (imagio.testing_slicer): the issue-16 findings, each with its
test — masks are re-read after a segment edit, the user's results table survives 'Compute zone', 'Plan probes'
writes into the chosen zone segmentation, the probe observer goes with the scene; re-planning from lines."""

import numpy as np
import pytest

from imagio import geometry
from imagio.io import Segment
from imagio.testing_slicer import SlicerHarness


@pytest.fixture
def module():
    with SlicerHarness() as h:
        h.load_module("IMAGIOCommon")
        import slicer

        from imagio.mrml import add_line, add_table, segmentation_node_from_segments, volume_node_from_image
        from imagio.testing import oblique_image

        widget = h.create_widget("IMAGIOAblationZone")
        grid = oblique_image(size=(64, 60, 36), spacing=(1.1, 1.0, 1.6), origin_ras=(-35.0, -30.0, -30.0),
                             axis=(1.0, -2.0, 1.0), angle_deg=19.0)
        kji = np.argwhere(np.ones(grid.GetSize()[::-1], bool))
        pts = geometry.ijk_to_ras(grid, kji[:, ::-1].astype(float))
        centre = geometry.ijk_to_ras(grid, [32, 30, 18])
        tumor = (np.linalg.norm(pts - centre, axis=1) <= 6.0).reshape(grid.GetSize()[::-1]).astype(np.uint8)
        ct = volume_node_from_image(slicer.mrmlScene, geometry.copy_geometry(np.zeros(tumor.shape, np.int16), grid), "CT")
        seg = segmentation_node_from_segments(slicer.mrmlScene, [Segment("liver_tumor",
                                                                         geometry.copy_geometry(tumor, grid))], "Seg", ct)
        u = np.array([0.0, 0.6, 0.8])
        line = add_line(slicer.mrmlScene, "Probe", centre - 90 * u, centre + 11.55 * u)
        p = widget.logic.getParameterNode()
        p.referenceVolume, p.segmentation, p.probeLine = ct, seg, line
        p.tumorSegmentID = seg.GetSegmentation().GetSegmentIdBySegmentName("liver_tumor")
        p.avoidSegmentIDs, p.vesselSegmentIDs = [], []
        from IMAGIOAblationZoneLib.options import Tissue, ZoneModel

        p.deviceId, p.powerW, p.timeS, p.model, p.tissue = "emprint", 100.0, 600.0, ZoneModel.TABLE, Tissue.LIVER
        yield {"h": h, "slicer": slicer, "widget": widget, "p": p, "grid": grid, "tumor": tumor, "seg": seg,
               "line": line, "add_table": add_table, "centre": centre}


def test_an_edited_tumour_segment_is_read_again(module):
    from IMAGIOAblationZoneLib.logic import write_zone_segment

    logic, p = module["widget"].logic, module["p"]
    logic.computeZone(p)
    before = logic.impl.context(p).tumor_count
    grown = module["tumor"].copy()
    grown[16:20, 28:32, 40:46] = 1  # a Segment Editor edit: the segment's labelmap changes, not the node's MTime
    mtime = module["seg"].GetMTime()
    write_zone_segment(module["slicer"].mrmlScene, geometry.copy_geometry(grown, module["grid"]), module["seg"],
                       "liver_tumor")
    assert module["seg"].GetMTime() == mtime
    logic.computeZone(p)
    assert logic.impl.context(p).tumor_count == int(grown.sum()) != before


def test_compute_zone_never_deletes_the_users_table_but_replaces_its_own(module):
    slicer, logic, p = module["slicer"], module["widget"].logic, module["p"]
    mine = module["add_table"](slicer.mrmlScene, "My notes", [{"note": "keep me"}])
    p.resultsTable = mine
    logic.computeZone(p)
    assert slicer.mrmlScene.GetNodeByID(mine.GetID()) is mine and p.resultsTable is not mine
    own = p.resultsTable
    logic.computeZone(p)
    assert slicer.mrmlScene.GetNodeByID(own.GetID()) is None and p.resultsTable is not own  # its own: replaced


def test_plan_probes_writes_into_the_chosen_zone_segmentation(module):
    from imagio.mrml import segmentation_node_from_segments, segments_from_segmentation_node

    slicer, logic, p = module["slicer"], module["widget"].logic, module["p"]
    notes = np.zeros(module["tumor"].shape, np.uint8)
    notes[2:5, 2:5, 2:5] = 1
    chosen = segmentation_node_from_segments(slicer.mrmlScene, [Segment("notes", geometry.copy_geometry(
        notes, module["grid"]))], "Chosen")
    p.zoneSegmentation = chosen
    plan = logic.planProbes(p)
    assert plan.feasible and plan.minimal_margin_mm >= 5.0
    assert p.zoneSegmentation is chosen
    names = {s.name: s for s in segments_from_segmentation_node(chosen)}
    assert set(names) == {"notes", "planned_ablation_zone"} and names["notes"].voxel_count() == 27
    assert "Warning:" in "\n".join(f"Warning: {w}" for w in logic.lastWarnings) and logic.lastSummary


def test_the_probe_observer_goes_with_the_scene_and_replan_takes_lines(module):
    slicer, widget, p = module["slicer"], module["widget"], module["p"]
    res = widget.logic.impl.replan_from_lines(p, [module["line"]])
    assert res.placed.metrics["minimal_margin_mm"] is not None and p.resultsTable is not None
    assert any(obj is module["line"] for obj, *_ in widget.Observations)  # live update follows the probe line
    slicer.mrmlScene.Clear()
    assert not any(obj is module["line"] for obj, *_ in widget.Observations)


def _node_ids(scene) -> set:
    import slicer

    slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)  # Slicer's singleton, there from the start
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def test_plan_probes_runs_in_a_child_process_and_gives_the_in_process_plan(module):
    """'Plan probes' is a background job (imagio.jobs): a real child process, Cancel while it runs, no
    processEvents(); its plan equals the plan computed in this process, and only then are its nodes added."""
    h, slicer, widget, p = module["h"], module["slicer"], module["widget"], module["p"]
    ui = widget.ui
    expected = widget.logic.impl.logic.plan(**widget.logic.impl.plan_request(p))  # the same plan, in-process
    before = _node_ids(slicer.mrmlScene)
    calls = slicer.app.processEventsCalls
    ui.planButton.click()
    job = widget._job
    assert job is not None and job.process.poll() is None and ui.planButton.text == "Cancel"
    assert not ui.applyButton.enabled and not ui.replanButton.enabled  # one step at a time
    assert _node_ids(slicer.mrmlScene) == before
    assert h.run_event_loop(until=lambda: not widget.jobRunning, timeout_s=180)
    assert slicer.app.processEventsCalls == calls and ui.planButton.text == "Plan probes"
    assert ui.applyButton.enabled and ui.replanButton.enabled
    got = {n.GetName() for n in (slicer.mrmlScene.GetNodeByID(i) for i in _node_ids(slicer.mrmlScene) - before)}
    assert {f"Planned probe {n + 1}" for n in range(len(expected.probes))} <= got and "Ablation plan" in got
    assert len(expected.probes) >= 1 and expected.feasible
    line = slicer.mrmlScene.GetFirstNodeByName("Planned probe 1")
    tip = np.array(line.GetNthControlPointPositionWorld(1))
    assert np.allclose(tip, expected.probes[0].tip_ras, atol=1e-6)  # the child's plan is the in-process plan
    assert "Warning" not in ui.statusLabel.text and "margin" in widget.logic.lastSummary.lower()
    assert not job.work.exists()
    # the panel's DICOM export: the SR would carry this plan's numbers (plan.json's keys), under the tumour's name
    plan = widget.logic.exportResults["plan"]
    assert plan["probe_count"] == len(expected.probes) and plan["feasible"] is True
    assert plan["minimal_margin_mm"] == pytest.approx(round(expected.margin.minimal_margin_mm, 2))
    tumor = p.segmentation.GetSegmentation().GetSegment(p.tumorSegmentID).GetName()
    assert plan["inputs"]["tumor_segment"] == tumor
    assert f"{plan['probe_count']} probes" in ui.exportResultsLabel.text and " mm" in ui.exportResultsLabel.text


def test_cancelling_the_bioheat_zone_adds_nothing_and_ends_the_process(module):
    h, slicer, widget, p = module["h"], module["slicer"], module["widget"], module["p"]
    from IMAGIOAblationZoneLib.options import ZoneModel

    p.model = ZoneModel.BIOHEAT
    before = _node_ids(slicer.mrmlScene)
    widget.ui.applyButton.click()
    job = widget._job
    assert job is not None and widget.ui.applyButton.text == "Cancel"
    widget.ui.applyButton.click()
    assert job.process.poll() is not None and not widget.jobRunning
    h.run_event_loop(timeout_s=0.3)
    assert _node_ids(slicer.mrmlScene) == before and p.zoneSegmentation is None
    assert widget.ui.applyButton.text == "Compute zone" and "Cancelled" in widget.ui.statusLabel.text


def test_zone_model_and_tissue_are_enums_in_the_parameter_node_and_the_combo_boxes(module):
    from IMAGIOAblationZoneLib.devices import TISSUE_CHOICES
    from IMAGIOAblationZoneLib.options import Tissue, ZoneModel

    widget, p = module["widget"], module["p"]
    combo = widget.ui.modelComboBox
    assert [combo.itemText(i) for i in range(combo.count)] == ["table", "bioheat"]
    tissues = widget.ui.tissueComboBox
    assert [tissues.itemText(i) for i in range(tissues.count)] == ["auto", *TISSUE_CHOICES]
    combo.currentIndex = 1  # the user picks "bioheat"
    assert p.model is ZoneModel.BIOHEAT and p.model == "bioheat"  # an Enum that reads as the CLI's word
    p.tissue = Tissue.KIDNEY
    assert tissues.currentText == "kidney" and widget.logic.impl._tissue(p) == "kidney"
    with pytest.raises((TypeError, ValueError)):  # a plain string is not a valid value of the typed field
        p.model = "bioheat"


def test_segments_are_chosen_by_id_in_segment_selectors_with_multi_select(module):
    """The tumour in a single segment selector, vessels and structures to avoid in multi-select ones: IDs in the
    parameter node both ways; a renamed segment stays chosen (no names are guessed)."""
    from IMAGIOAblationZoneLib.logic import write_zone_segment

    slicer, widget, p, seg, grid = module["slicer"], module["widget"], module["p"], module["seg"], module["grid"]
    ui = widget.ui
    for name, k in (("vessel A", 4), ("vessel B", 8), ("rib", 30)):
        arr = np.zeros(module["tumor"].shape, np.uint8)
        arr[k:k + 2, 5:55, 30:34] = 1
        write_zone_segment(slicer.mrmlScene, geometry.copy_geometry(arr, grid), seg, name)
    ids = seg.GetSegmentation().GetSegmentIdBySegmentName
    widget.updateSegmentSelectors()
    assert ui.tumorSegmentSelector.currentNode() is seg and ui.tumorSegmentSelector.currentSegmentID() == ids("liver_tumor")
    ui.vesselSegmentsSelector.setSelectedSegmentIDs([ids("vessel A"), ids("vessel B")])  # the user checks two
    ui.avoidSegmentsSelector.setSelectedSegmentIDs([ids("rib")])
    assert list(p.vesselSegmentIDs) == [ids("vessel A"), ids("vessel B")] and list(p.avoidSegmentIDs) == [ids("rib")]
    p.avoidSegmentIDs = [ids("vessel B"), ids("rib")]  # parameter -> selector
    assert ui.avoidSegmentsSelector.selectedSegmentIDs() == [ids("vessel B"), ids("rib")]
    seg.GetSegmentation().GetSegment(ids("liver_tumor")).SetName("GTV (renamed)")
    widget.logic.computeZone(p)
    ctx = widget.logic.impl.context(p)
    assert ctx.tumor_count == int(module["tumor"].sum())  # still the tumour, chosen by its ID
    assert sorted(widget.logic.impl._vessels) == ["vessel A", "vessel B"]
    p.tumorSegmentID = "no-such-segment"
    from imagio.errors import ImagioError

    with pytest.raises(ImagioError, match="not in 'Seg'"):
        widget.logic.impl.plan_request(p)


def test_replan_from_placed_probes_runs_in_a_child_process_and_gives_the_in_process_replan(module):
    """'Re-plan' is a background job: the lines checked in the selector are read at the click, the child's
    re-plan equals the in-process one (same proposal, same residual), and nothing is added before it is done."""
    from IMAGIOAblationZoneLib.logic import run_replan

    h, slicer, widget, p, line = module["h"], module["slicer"], module["widget"], module["p"], module["line"]
    ui = widget.ui
    p.marginMm = 12.0  # the probe as placed keeps 11.3 mm, less than 12 mm: a change is proposed
    ui.placedProbesSelector.setCheckState(line, 2)
    assert ui.placedProbesSelector.checkedNodes() == [line]
    expected = run_replan(widget.logic.impl.logic, **widget.logic.impl.replan_request(p, [line]))
    before = _node_ids(slicer.mrmlScene)
    calls = slicer.app.processEventsCalls
    ui.replanButton.click()
    job = widget._job
    assert job is not None and job.process.poll() is None and ui.replanButton.text == "Cancel"
    assert not ui.applyButton.enabled and not ui.planButton.enabled
    assert _node_ids(slicer.mrmlScene) == before
    assert h.run_event_loop(until=lambda: not widget.jobRunning, timeout_s=180)
    assert slicer.app.processEventsCalls == calls and ui.replanButton.text == "Re-plan from placed probes"
    got = {n.GetName() for n in (slicer.mrmlScene.GetNodeByID(i) for i in _node_ids(slicer.mrmlScene) - before)}
    assert {"Re-plan zones", "Re-plan results"} <= got
    table = p.resultsTable
    assert table is not None and table.GetName() == "Re-plan results"
    assert expected.proposal["kind"] == "changed setting"  # a real proposal (150 W), compared below
    rows = [{table.GetTable().GetColumnName(c): table.GetCellText(r, c) for c in range(table.GetNumberOfColumns())}
            for r in range(table.GetNumberOfRows())]
    assert rows == [{k: str(v) for k, v in row.items()} for row in expected.table_rows()]
    assert expected.reason in widget.logic.lastSummary and not job.work.exists()


def test_cancelling_or_failing_the_replan_leaves_the_scene_as_it_was(module):
    h, slicer, widget, p, line = module["h"], module["slicer"], module["widget"], module["p"], module["line"]
    ui = widget.ui
    p.marginMm = 12.0
    ui.placedProbesSelector.setCheckState(line, 2)
    before = _node_ids(slicer.mrmlScene)
    ui.replanButton.click()
    job = widget._job
    assert job is not None and ui.replanButton.text == "Cancel"
    ui.replanButton.click()  # Cancel
    assert job.process.poll() is not None and not widget.jobRunning
    h.run_event_loop(timeout_s=0.3)
    assert _node_ids(slicer.mrmlScene) == before and p.resultsTable is None
    assert ui.replanButton.text == "Re-plan from placed probes" and "Cancelled" in ui.statusLabel.text
    p.timeS = 0.0  # the parameter node allows 0 s; the device setting (checked in the child) does not
    ui.replanButton.click()
    assert h.run_event_loop(until=lambda: not widget.jobRunning, timeout_s=180)
    assert _node_ids(slicer.mrmlScene) == before and p.resultsTable is None
    assert ui.statusLabel.text.startswith("Re-plan failed: Time 0 s is out of range") and "\n" not in ui.statusLabel.text
