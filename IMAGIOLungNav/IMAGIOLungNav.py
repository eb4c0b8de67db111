"""IMAGIOLungNav: from a chest CT to a bronchoscopic route to a peripheral lung lesion.

The algorithms live in IMAGIOLungNavLib (no Qt; they run on any vtkMRMLScene). This file holds the
Slicer module, its typed parameter node, the widget, a thin Logic adapter and the self-test. Airway
segmentation and routing run in a background process (imagio.jobs, started with Slicer's Python), so
Slicer never freezes; Apply turns into Cancel while it runs.
"""

import logging
from typing import Annotated

import slicer
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

import imagio  # noqa: F401  (the IMAGIOCommon module puts it on sys.path)
from imagio.dicom_export import DicomExportLogicMixin
from imagio.slicer_widget import DicomExportWidgetMixin, JobWidgetMixin, SegmentSelector, SegmentSelectorsMixin


class IMAGIOLungNav(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "IMAGIO Lung Navigation"
        self.parent.categories = ["IGT.IMAGIO"]
        self.parent.dependencies = ["IMAGIOCommon"]
        self.parent.contributors = ["IMAGIO developers (imagio-slicer project)"]
        self.parent.helpText = (
            "Airway segmentation from a chest CT, a centerline graph of the bronchial tree (generations, lengths "
            "and lumen diameters in mm, anatomical names where they can be inferred) and the bronchoscopic route "
            "from the trachea to the airway point nearest a target point or lesion: route length (mm), gap to the "
            "target (mm), narrowest lumen (mm) against the scope's outer diameter, largest turning angle (deg), "
            "bronchus sign. The route is a markups curve for the Endoscopy module's fly-through. "
            "See <a href='https://github.com/imagio-slicer/SlicerIMAGIO'>the documentation</a>."
        )
        self.parent.acknowledgementText = "Uses SimpleITK and Slicer's MRML. Not for clinical use."


@parameterNodeWrapper
class IMAGIOLungNavParameterNode:
    ctVolume: vtkMRMLScalarVolumeNode
    airwaySegmentation: vtkMRMLSegmentationNode
    airwaySegmentID: str = ""            # segments by ID (segment selectors; never "the node's first segment")
    targetPoints: vtkMRMLMarkupsFiducialNode
    lesionSegmentation: vtkMRMLSegmentationNode
    lesionSegmentID: str = ""
    scopeDiameterMm: Annotated[float, WithinRange(0.5, 12.0)] = 4.2


class IMAGIOLungNavWidget(DicomExportWidgetMixin, SegmentSelectorsMixin, JobWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/IMAGIOLungNav.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = IMAGIOLungNavLogic()
        self.setupJobs(self.ui.progressBar, self.ui.resultLabel)
        self.setupDicomExport(moduleButtons=(self.ui.applyButton,))
        self.observeSceneClose()
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.connectSegmentSelectors()
        self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        JobWidgetMixin.initializeParameterNode(self)
        if not self._parameterNode.ctVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.ctVolume = first

    def segmentSelectors(self):
        return (SegmentSelector(self.ui.airwaySegmentSelector, "airwaySegmentation", "airwaySegmentID"),
                SegmentSelector(self.ui.lesionSegmentSelector, "lesionSegmentation", "lesionSegmentID"))

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        self.updateSegmentSelectors()
        if self.jobRunning:
            return  # Apply is Cancel while the route is planned
        p = self._parameterNode
        ok = bool(p and (p.ctVolume or p.airwaySegmentation) and (p.targetPoints or p.lesionSegmentation))
        self.ui.applyButton.enabled = ok
        self.ui.applyButton.toolTip = "Plan the route" if ok else "Select a CT (or an airway) and a target or lesion"

    def onApplyButton(self) -> None:
        if self.jobRunning:  # the button is "Cancel"
            self.cancelJob()
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Route planning failed.", waitCursor=True):
            job = self.logic.startRoute(p.ctVolume, p.airwaySegmentation, p.targetPoints, p.lesionSegmentation,
                                        p.scopeDiameterMm, p.airwaySegmentID, p.lesionSegmentID)
            self.startJob(job, self.onRouteDone, button=self.ui.applyButton, what="Route planning failed")

    def onRouteDone(self, result) -> None:
        """The background job's LungNavResult: its nodes go into the scene, its summary into the panel."""
        self.logic.addResult(result, self._parameterNode.ctVolume, self._parameterNode)
        self.ui.resultLabel.text = result.summary_text()


class IMAGIOLungNavLogic(DicomExportLogicMixin, ScriptedLoadableModuleLogic):
    """Thin adapter: Slicer's scene and parameter node over IMAGIOLungNavLib.logic.LungNavLogic."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return IMAGIOLungNavParameterNode(super().getParameterNode())

    def _lib(self):
        from IMAGIOLungNavLib.logic import LungNavLogic

        return LungNavLogic(slicer.mrmlScene)

    @staticmethod
    def _nodeArgs(ctNode, airwayNode, targetNode, lesionNode, scopeDiameterMm, airwaySegmentID, lesionSegmentID):
        """The node-level arguments; a chosen segmentation needs its chosen segment ID (no first-segment guess)."""
        from imagio.errors import ImagioError

        for node, sid, role in ((airwayNode, airwaySegmentID, "airway"), (lesionNode, lesionSegmentID, "lesion")):
            if node is not None and not sid:
                raise ImagioError(f"No {role} segment chosen in '{node.GetName()}'", f"Choose the {role} segment")
        return {"ct_node": ctNode, "airway_node": airwayNode, "airway_segment_id": airwaySegmentID or None,
                "target_node": targetNode, "lesion_node": lesionNode, "lesion_segment_id": lesionSegmentID or None,
                "scope_diameter_mm": scopeDiameterMm}

    def process(self, ctNode, airwayNode, targetNode, lesionNode, scopeDiameterMm: float = 4.2,
                airwaySegmentID: str = "", lesionSegmentID: str = "", progress=None):
        """Plan the route in this process (blocking: scripts and the self-test); new nodes in the scene."""
        logging.info("IMAGIOLungNav: planning a route")
        return self._lib().run_nodes(**self._nodeArgs(ctNode, airwayNode, targetNode, lesionNode, scopeDiameterMm,
                                                      airwaySegmentID, lesionSegmentID), progress=progress)

    def startRoute(self, ctNode, airwayNode, targetNode, lesionNode, scopeDiameterMm: float = 4.2,
                   airwaySegmentID: str = "", lesionSegmentID: str = ""):
        """The same as a background job (imagio.jobs.Job with Slicer's PythonSlicer; airway segmentation and
        routing run in the child, this process only reads the nodes and later adds the result's)."""
        return self._lib().start_nodes(**self._nodeArgs(ctNode, airwayNode, targetNode, lesionNode,
                                                        scopeDiameterMm, airwaySegmentID, lesionSegmentID))

    def addResult(self, result, ctNode=None, p=None) -> dict:
        """The new nodes of a finished job's LungNavResult; its route becomes the DICOM SR's numbers."""
        nodes = self._lib().add_nodes(result, reference_node=ctNode)
        self.setExportResults("route", *routeExportData(p, result))
        return nodes


def routeExportData(p, result) -> tuple:
    """``(route.json content, description)`` of a planned route, for the DICOM SR (``imagio lungnav``'s route.json,
    with the lesion segment's name the SR groups its numbers under)."""
    data = result.route.contract_dict()
    segment = None
    if p is not None and p.lesionSegmentation is not None and p.lesionSegmentID:
        segment = p.lesionSegmentation.GetSegmentation().GetSegment(p.lesionSegmentID)
    data["inputs"] = {"lesion_segment": segment.GetName() if segment is not None else ""}
    r = result.route
    text = (f"the last route (length {r.path_length_mm:.1f} mm, exit generation {r.generation}, gap to the target "
            f"{r.gap_to_target_mm:.1f} mm)")
    return data, text


class IMAGIOLungNavTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_route_to_phantom_nodule()

    def test_route_to_phantom_nodule(self):
        """Segment the phantom's airway, plan a route to its lung nodule, check it against the known truth."""
        import numpy as np

        from imagio.mrml import segmentation_node_from_segments, volume_node_from_image
        from imagio.phantom import make_phantom

        self.delayDisplay("Making the phantom")
        ph = make_phantom(0)
        ct = volume_node_from_image(slicer.mrmlScene, ph.ct, "Phantom CT")
        lesion = segmentation_node_from_segments(slicer.mrmlScene, [ph.segments["lung_nodule"]], "Nodule", ct)
        nodule = lesion.GetSegmentation().GetSegmentIdBySegmentName("lung_nodule")
        result = IMAGIOLungNavLogic().process(ct, None, None, lesion, 4.2, lesionSegmentID=nodule)
        r = result.route
        self.assertLess(r.gap_to_target_mm, 6.0)
        self.assertGreaterEqual(r.generation, 4)
        self.assertEqual(r.branch_names[0], "trachea")
        truth = np.vstack([np.asarray(b["points_ras"]) for b in ph.airway_centerlines])
        d = np.linalg.norm(truth[None, :, :] - r.route_points_ras[:, None, :], axis=2).min(axis=1)
        self.assertGreater(float(np.mean(d <= 3.0)), 0.9)
        self.assertIsNotNone(result.nodes.get("route_curve"))
        self.delayDisplay("Route test passed")
