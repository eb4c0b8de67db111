"""The Planning widget on Slicer 5.10's own framework: the seeded segmentation runs as a background job too.

Apply (method Seed) starts a real child process (imagio.jobs), turns into Cancel, never calls
processEvents(); the segmentation the job returns is the one the in-process Logic gives, added only when
the job is done. One child process.
"""

import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from imagio.testing_slicer import SlicerHarness

sys.path.insert(0, str(Path(__file__).parent))

from test_seeded import juxtapleural_case  # noqa: E402


def test_seeded_segmentation_runs_in_a_child_process_and_equals_the_in_process_one():
    ct_image, truth, centre = juxtapleural_case()
    with SlicerHarness() as h:
        h.load_module("IMAGIOCommon")
        import slicer

        from imagio.mrml import add_fiducials, segments_from_segmentation_node, volume_node_from_image
        from IMAGIOPlanningLib.options import LesionKind, Method

        widget = h.create_widget("IMAGIOPlanning")
        ct = volume_node_from_image(slicer.mrmlScene, ct_image, "CT")
        seeds = add_fiducials(slicer.mrmlScene, "Seed", [centre])
        p = widget._parameterNode
        p.ctVolume, p.method, p.seedPoints, p.lesionKind, p.radiusMm = ct, Method.SEED, seeds, LesionKind.LUNG_NODULE, 0.0
        expected = widget.logic._session().logic.segment_from_seed(ct_image, centre, "lung-nodule")  # in-process
        slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(slicer.mrmlScene)
        segs_before = slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems()
        calls = slicer.app.processEventsCalls
        label = widget.ui.applyButton.text
        widget.ui.applyButton.click()
        job = widget._job
        assert job is not None and job.process.poll() is None and widget.ui.applyButton.text == "Cancel"
        assert slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == segs_before
        assert h.run_event_loop(until=lambda: not widget.jobRunning, timeout_s=180)
        assert slicer.app.processEventsCalls == calls and widget.ui.applyButton.text == label
        nodes = slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode")
        assert nodes.GetNumberOfItems() == segs_before + 1
        got = segments_from_segmentation_node(nodes.GetItemAsObject(nodes.GetNumberOfItems() - 1), ct)
        assert len(got) == 1
        mask = sitk.GetArrayViewFromImage(got[0].mask) > 0
        assert np.array_equal(mask, sitk.GetArrayViewFromImage(expected.masks[0].mask) > 0)
        dice = 2.0 * float((mask & truth).sum()) / float(mask.sum() + truth.sum())
        assert dice > 0.8, dice  # and it is the nodule
        assert " ml" in widget.ui.resultLabel.text
        assert not job.work.exists()
