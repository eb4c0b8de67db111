"""The margin assessment as a background job (IMAGIOMarginLib.jobs): a real child process gives the in-process
MarginResult, read from the same nodes; bad nodes are refused before any process starts. One child process."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from imagio import mrml
from imagio.errors import ImagioError
from imagio.io import Segment
from imagio.scene import new_scene
from IMAGIOMarginLib.jobs import start_assessment_nodes
from IMAGIOMarginLib.logic import MarginLogic

sys.path.insert(0, str(Path(__file__).parent))

from test_margin_logic import ball, grid  # noqa: E402


def _without_times(d: dict) -> dict:
    return {k: v for k, v in d.items() if not k.endswith("_s")}


def test_the_assessment_job_gives_the_in_process_result_from_the_same_nodes(tmp_path):
    ref = grid()
    tumor = ball(ref, np.array([45.0, 40.0, 25.0]), 8.0)
    zone = ball(ref, np.array([48.0, 40.0, 25.0]), 14.0)
    scene = new_scene()
    tnode = mrml.segmentation_node_from_segments(scene, [Segment("GTV", tumor)], "Tumour")
    znode = mrml.segmentation_node_from_segments(scene, [Segment("zone", zone)], "Zone")
    tid, zid = tnode.GetSegmentation().GetNthSegmentID(0), znode.GetSegmentation().GetNthSegmentID(0)
    options = {"threshold_mm": 5.0, "sigma_mm": 1.6, "seed": 3}
    expected = MarginLogic(scene).assess_nodes(tnode, tid, znode, zid, **options)
    n_nodes = scene.GetNumberOfNodes()
    job = start_assessment_nodes(tnode, tid, znode, zid, **options)
    try:
        status = job.wait(timeout_s=300)
        assert status.state == "done", status.message
        got = job.result()
    finally:
        job.cleanup()
    assert scene.GetNumberOfNodes() == n_nodes  # nothing was added by starting or running the job
    assert type(got).__name__ == "MarginResult"
    assert _without_times(got.to_dict()) == _without_times(expected.to_dict())
    assert np.array_equal(sitk.GetArrayViewFromImage(got.tumor_on_zone), sitk.GetArrayViewFromImage(expected.tumor_on_zone))
    nodes = MarginLogic(scene).add_to_scene(got, "Margin")  # the parent adds the child's result as usual
    assert nodes.table.GetNumberOfRows() > 0


def test_bad_nodes_are_refused_before_a_process_starts():
    scene = new_scene()
    ref = grid()
    tnode = mrml.segmentation_node_from_segments(scene, [Segment("GTV", ball(ref, np.array([45.0, 40.0, 25.0]), 8.0))],
                                                 "Tumour")
    with pytest.raises(ImagioError, match="No ablation zone segmentation chosen"):
        start_assessment_nodes(tnode, tnode.GetSegmentation().GetNthSegmentID(0), None, "")


def test_the_widget_runs_a_registration_in_the_background_and_cancel_adds_nothing():
    """Registration rigid/deformable: Apply starts the job (button -> Cancel, a real child process); Cancel ends its
    process group and adds nothing. Without registration Apply stays in-process (the module's self-test)."""
    from imagio.testing_slicer import SlicerHarness

    ref = grid()
    with SlicerHarness() as h:
        h.load_module("IMAGIOCommon")
        import slicer

        widget = h.create_widget("IMAGIOMargin")
        scene = slicer.mrmlScene
        ct = mrml.volume_node_from_image(scene, sitk.Cast(ball(ref, np.array([45.0, 40.0, 25.0]), 20.0), sitk.sitkInt16)
                                         * 100, "CT")
        tnode = mrml.segmentation_node_from_segments(scene, [Segment("GTV", ball(ref, np.array([45.0, 40.0, 25.0]), 8.0))],
                                                     "Tumour", ct)
        znode = mrml.segmentation_node_from_segments(scene, [Segment("zone", ball(ref, np.array([48.0, 40.0, 25.0]),
                                                                                  14.0))], "Zone", ct)
        p = widget._parameterNode
        from IMAGIOMarginLib.options import Registration

        p.tumorSegmentation, p.zoneSegmentation, p.preCT, p.postCT = tnode, znode, ct, ct
        p.tumorSegmentID = tnode.GetSegmentation().GetNthSegmentID(0)
        p.zoneSegmentID = znode.GetSegmentation().GetNthSegmentID(0)
        p.registration = Registration.RIGID
        slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
        before = scene.GetNumberOfNodes()
        label = widget.ui.applyButton.text
        widget.ui.applyButton.click()
        job = widget._job
        assert job is not None and job.process.poll() is None and widget.ui.applyButton.text == "Cancel"
        assert widget.ui.applyButton.enabled
        widget.ui.applyButton.click()
        assert job.process.poll() is not None and not widget.jobRunning and not job.work.exists()
        h.run_event_loop(timeout_s=0.3)
        assert scene.GetNumberOfNodes() == before and p.resultsTable is None
        assert widget.ui.applyButton.text == label and "Cancelled" in widget.ui.statusLabel.text
