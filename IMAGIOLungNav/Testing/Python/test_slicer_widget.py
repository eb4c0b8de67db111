"""The LungNav widget on Slicer 5.10's own framework (imagio.testing_slicer): routing runs as a background job.

Apply starts a real child process (imagio.jobs, with the PythonSlicer the harness puts on PATH), the
button turns into Cancel, the progress bar follows the job, nothing calls processEvents(); the route's
nodes arrive only when the job is done. Cancel ends the process group and adds nothing; a failure shows
its one-line message and leaves the scene as it was. Three child processes in all.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

from imagio.io import Segment
from imagio.testing_slicer import SlicerHarness

sys.path.insert(0, str(Path(__file__).parent))

from _lungnav_synth import CARINA, CHILD_LEN, RIGHT_DIR  # noqa: E402


@pytest.fixture
def module(y_mask):
    with SlicerHarness(testing=False) as h:
        h.show_main_window()  # message boxes are recorded, not only logged
        h.load_module("IMAGIOCommon")
        import slicer

        from imagio.mrml import add_fiducials, segmentation_node_from_segments

        widget = h.create_widget("IMAGIOLungNav")
        slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(slicer.mrmlScene)  # Slicer's singleton, as in the app
        airway = segmentation_node_from_segments(slicer.mrmlScene, [Segment("airway", y_mask)], "Airway")
        target = add_fiducials(slicer.mrmlScene, "Target", [CARINA + RIGHT_DIR * (CHILD_LEN + 6.0)])
        p = widget._parameterNode
        p.ctVolume, p.airwaySegmentation, p.targetPoints, p.scopeDiameterMm = None, airway, target, 2.0
        p.airwaySegmentID = airway.GetSegmentation().GetNthSegmentID(0)
        yield {"h": h, "slicer": slicer, "widget": widget, "p": p, "target": target, "airway": airway,
               "y_mask": y_mask}


def _node_ids(scene) -> set:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def test_apply_runs_the_route_in_a_child_process_and_adds_its_nodes(module):
    h, slicer, widget = module["h"], module["slicer"], module["widget"]
    ui = widget.ui
    before = _node_ids(slicer.mrmlScene)
    calls = slicer.app.processEventsCalls
    label = ui.applyButton.text
    assert ui.applyButton.enabled
    ui.applyButton.click()
    job = widget._job
    assert job is not None and ui.applyButton.text == "Cancel" and ui.applyButton.enabled
    assert job.process.pid and job.process.poll() is None  # a real child process
    assert _node_ids(slicer.mrmlScene) == before  # nothing until the job is done
    assert h.run_event_loop(until=lambda: not widget.jobRunning, timeout_s=180)
    assert slicer.app.processEventsCalls == calls  # the computation never re-entered the event loop
    assert ui.applyButton.text == label and ui.progressBar.value == 100
    added = {slicer.mrmlScene.GetNodeByID(i).GetName() for i in _node_ids(slicer.mrmlScene) - before}
    assert {"Bronchoscopic route", "Airway centerlines", "Airway branches", "Exit point"} <= added
    curve = slicer.mrmlScene.GetFirstNodeByName("Bronchoscopic route")
    end = np.array(curve.GetNthControlPointPositionWorld(curve.GetNumberOfControlPoints() - 1))
    tip = CARINA + RIGHT_DIR * CHILD_LEN  # the analytic Y's right bronchus ends here: the route must too
    assert np.linalg.norm(end - tip) < 5.0
    assert "Route" in ui.resultLabel.text and " mm" in ui.resultLabel.text
    assert not job.work.exists()  # the job's folder is gone
    # the panel's DICOM export: the SR would carry route.json's numbers of this route
    route = widget.logic.exportResults["route"]
    pts = np.array([curve.GetNthControlPointPositionWorld(i) for i in range(curve.GetNumberOfControlPoints())])
    length = float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum())  # the route's polyline, as the curve holds it
    assert route["path_length_mm"] == pytest.approx(length, abs=0.05) and route["generation"] >= 1
    assert f"length {route['path_length_mm']:.1f} mm" in ui.exportResultsLabel.text


def test_cancel_ends_the_process_group_and_adds_nothing(module):
    h, slicer, widget = module["h"], module["slicer"], module["widget"]
    before = _node_ids(slicer.mrmlScene)
    label = widget.ui.applyButton.text
    widget.ui.applyButton.click()
    job = widget._job
    widget.ui.applyButton.click()  # "Cancel"
    assert job.process.poll() is not None and not widget.jobRunning
    assert widget.ui.applyButton.text == label and "Cancelled" in widget.ui.resultLabel.text
    h.run_event_loop(timeout_s=0.5)
    assert _node_ids(slicer.mrmlScene) == before and h.active_timers == 0
    assert not job.work.exists()


def test_a_failed_route_shows_one_line_and_leaves_the_scene(module):
    h, slicer, widget, target = module["h"], module["slicer"], module["widget"], module["target"]
    target.SetNthControlPointPosition(0, *(CARINA + np.array([0.0, 95.0, 0.0])))  # 95 mm from every airway
    before = _node_ids(slicer.mrmlScene)
    import qt

    h.answer_dialogs(qt.QMessageBox.Ok)
    widget.ui.applyButton.click()
    assert h.run_event_loop(until=lambda: not widget.jobRunning, timeout_s=180)
    assert _node_ids(slicer.mrmlScene) == before
    errors = [d["text"] for d in h.dialogs if "Route planning failed" in d["text"]]
    assert len(errors) == 1 and "\n" not in errors[0] and "mm from the nearest airway" in errors[0]
    assert "Traceback" not in errors[0]
    assert widget.ui.resultLabel.text == errors[0] and widget.ui.applyButton.text != "Cancel"


def test_the_progress_bar_follows_the_jobs_progress(module):
    """JobWidgetMixin shows each progress step of the child (a job of 4 steps, 0.25 s apart: deterministic)."""
    from imagio.jobs import Job
    from imagio.testing import oblique_image

    h, widget = module["h"], module["widget"]
    ui = widget.ui
    widget._jobTimer.setInterval(20)
    seen, done = [], []
    job = Job("imagio.testing.job_scale", {"image": oblique_image(size=(4, 4, 3)), "factor": 2.0, "steps": 4,
                                           "delay_s": 0.25})
    widget.startJob(job, done.append, button=ui.applyButton, what="Scaling failed")

    def watch():
        text = ui.progressBar.format.replace("%p", str(ui.progressBar.value))
        if not seen or seen[-1] != text:
            seen.append(text)
        return not widget.jobRunning

    assert h.run_event_loop(until=watch, timeout_s=120)
    assert {"Step 2 of 4 (25%)", "Step 3 of 4 (50%)", "Step 4 of 4 (75%)"} <= set(seen), seen
    assert seen[-1] == "Done (100%)" and done and done[0]["steps"] == 4  # onDone got the job's return value



def test_airway_segment_is_chosen_by_id_in_a_segment_selector(module):
    """The airway is a node + segment ID (qMRMLSegmentSelectorWidget), both ways with the parameter node: a
    renamed segment stays chosen, the node's first segment is not taken instead, a missing ID is one line."""
    import SimpleITK as sitk

    from imagio.errors import ImagioError
    from imagio.mrml import segmentation_node_from_segments

    slicer, widget, p, y = module["slicer"], module["widget"], module["p"], module["y_mask"]
    ui = widget.ui
    arr = np.zeros(sitk.GetArrayViewFromImage(y).shape, np.uint8)
    arr[2:6, 2:6, 2:6] = 1  # a decoy, first in the node: "the node's first segment" would take it
    decoy = sitk.GetImageFromArray(arr)
    decoy.CopyInformation(y)
    node = segmentation_node_from_segments(slicer.mrmlScene, [Segment("decoy", decoy), Segment("airway", y)], "Two")
    ids = node.GetSegmentation().GetSegmentIdBySegmentName
    ui.airwaySegmentSelector.setCurrentNode(node)  # the user picks the node, then the segment
    ui.airwaySegmentSelector.setCurrentSegmentID(ids("airway"))
    assert p.airwaySegmentation is node and p.airwaySegmentID == ids("airway")
    airway_id = ids("airway")
    node.GetSegmentation().GetSegment(airway_id).SetName("bronchial tree (renamed)")
    inputs = widget.logic._lib().inputs_from_nodes(
        **widget.logic._nodeArgs(None, p.airwaySegmentation, p.targetPoints, None, 2.0, p.airwaySegmentID, ""))
    from imagio.geometry import resample_to

    got = sitk.GetArrayFromImage(resample_to(inputs["airway"], y))  # the export is cropped to the segment
    assert np.array_equal(got, sitk.GetArrayViewFromImage(y)) and got.sum() > 1000  # the airway, not the decoy
    p.airwaySegmentID = ids("decoy")  # parameter node -> selector
    assert ui.airwaySegmentSelector.currentSegmentID() == ids("decoy")
    with pytest.raises(ImagioError, match="^The airway segment 'no-such-segment' is not in 'Two'") as e:
        widget.logic.startRoute(None, node, p.targetPoints, None, 2.0, "no-such-segment")
    assert "\n" not in str(e.value)
    node.GetSegmentation().RemoveSegment(ids("decoy"))  # the chosen segment is deleted: the selector drops it
    widget.updateSegmentSelectors()
    assert p.airwaySegmentID == ""
    with pytest.raises(ImagioError, match="^No airway segment chosen in 'Two'"):
        widget.logic.startRoute(None, p.airwaySegmentation, p.targetPoints, None, 2.0, p.airwaySegmentID)
