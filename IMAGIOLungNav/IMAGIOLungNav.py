"""IMAGIOLungNav: from a chest CT to a bronchoscopic route to a peripheral lung lesion.

The algorithms live in IMAGIOLungNavLib (no Qt; they run on any vtkMRMLScene). This file holds the
Slicer module, its typed parameter node, the widget, a thin Logic adapter and the self-test.
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
from imagio.slicer_widget import ParameterNodeWidgetMixin


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
    targetPoints: vtkMRMLMarkupsFiducialNode
    lesionSegmentation: vtkMRMLSegmentationNode
    scopeDiameterMm: Annotated[float, WithinRange(0.5, 12.0)] = 4.2


class IMAGIOLungNavWidget(ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._progress = None  # set while a route is being planned; Apply then works as Cancel

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/IMAGIOLungNav.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = IMAGIOLungNavLogic()
        self.observeSceneClose()
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        ParameterNodeWidgetMixin.initializeParameterNode(self)
        if not self._parameterNode.ctVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.ctVolume = first

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        p = self._parameterNode
        ok = bool(p and (p.ctVolume or p.airwaySegmentation) and (p.targetPoints or p.lesionSegmentation))
        self.ui.applyButton.enabled = ok
        self.ui.applyButton.toolTip = "Plan the route" if ok else "Select a CT (or an airway) and a target or lesion"

    def _onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(100 * fraction)
        self.ui.progressBar.setFormat(f"{message} (%p%)")
        slicer.app.processEvents()

    def onApplyButton(self) -> None:
        if self._progress is not None:  # running: the button is "Cancel"
            self._progress.cancel()
            return
        from imagio.errors import Cancelled
        from imagio.progress import Progress

        self._progress = Progress(self._onProgress)  # _onProgress keeps the GUI responsive (processEvents)
        applyText = self.ui.applyButton.text
        self.ui.applyButton.text = "Cancel"
        try:
            with slicer.util.tryWithErrorDisplay("Route planning failed."):
                p = self._parameterNode
                try:
                    result = self.logic.process(p.ctVolume, p.airwaySegmentation, p.targetPoints,
                                                p.lesionSegmentation, p.scopeDiameterMm, progress=self._progress)
                except Cancelled:
                    self.ui.resultLabel.text = "Cancelled: no route was added to the scene."
                    return
                r = result.route
                fits = "fits" if r.reachable else "does not fit"
                self.ui.resultLabel.text = (
                    f"Route {r.path_length_mm:.1f} mm through {' > '.join(r.branch_names)}; exit at generation "
                    f"{r.generation}, gap to target {r.gap_to_target_mm:.1f} mm. Narrowest lumen "
                    f"{r.min_lumen_diameter_mm:.1f} mm: the {p.scopeDiameterMm:.1f} mm scope {fits} all the way "
                    f"(it reaches to {r.scope_stop_to_target_mm:.1f} mm of the target). Largest turn "
                    f"{r.max_turn_angle_deg:.0f} deg. Bronchus sign: {'yes' if r.bronchus_sign else 'no'}.")
        finally:
            self._progress = None
            self.ui.applyButton.text = applyText


class IMAGIOLungNavLogic(ScriptedLoadableModuleLogic):
    """Thin adapter: Slicer's scene and parameter node over IMAGIOLungNavLib.logic.LungNavLogic."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return IMAGIOLungNavParameterNode(super().getParameterNode())

    def process(self, ctNode, airwayNode, targetNode, lesionNode, scopeDiameterMm: float = 4.2, progressCallback=None,
                progress=None):
        """Plan the route; ``progress`` (an imagio Progress) reports and cancels, else ``progressCallback``."""
        from imagio.progress import Progress
        from IMAGIOLungNavLib.logic import LungNavLogic

        logging.info("IMAGIOLungNav: planning a route")
        logic = LungNavLogic(slicer.mrmlScene)
        return logic.run_nodes(ct_node=ctNode, airway_node=airwayNode, target_node=targetNode,
                               lesion_node=lesionNode, scope_diameter_mm=scopeDiameterMm,
                               progress=progress if progress is not None else Progress(progressCallback))


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
        result = IMAGIOLungNavLogic().process(ct, None, None, lesion, 4.2)
        r = result.route
        self.assertLess(r.gap_to_target_mm, 6.0)
        self.assertGreaterEqual(r.generation, 4)
        self.assertEqual(r.branch_names[0], "trachea")
        truth = np.vstack([np.asarray(b["points_ras"]) for b in ph.airway_centerlines])
        d = np.linalg.norm(truth[None, :, :] - r.route_points_ras[:, None, :], axis=2).min(axis=1)
        self.assertGreater(float(np.mean(d <= 3.0)), 0.9)
        self.assertIsNotNone(result.nodes.get("route_curve"))
        self.delayDisplay("Route test passed")
