"""IMAGIOAblationZone: ablation zones from device tables and bioheat physics, and probe plans.

The algorithms live in ``IMAGIOAblationZoneLib`` (no Qt); this file is the
Slicer front end: module description, typed parameter node, widget and a thin
logic adapter over ``IMAGIOAblationZoneLib.logic.AblationZoneLogic``. Probe
planning, the bioheat zone and the re-plan run in a background process (imagio.jobs), so
Slicer never freezes; their button turns into Cancel while they run.
"""

import logging
from typing import Annotated

import slicer
from slicer import (
    vtkMRMLMarkupsLineNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
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
from IMAGIOAblationZoneLib.devices import load_library
from IMAGIOAblationZoneLib.options import Tissue, ZoneModel

#: Device ids of the bundled library (the combo box choices): every device, also those whose settings are all
#: unsourced (they need "Allow unsourced settings").
DEVICE_IDS = list(load_library())


class IMAGIOAblationZone(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "IMAGIO Ablation Zone"
        self.parent.categories = ["IGT.IMAGIO"]
        self.parent.dependencies = ["IMAGIOCommon"]
        self.parent.contributors = ["IMAGIO developers (imagio-slicer project)"]
        self.parent.helpText = (
            "Predicted thermal ablation zones for a probe placed with a markups line (point 1: entry on the skin, "
            "point 2: tip): ellipsoids from the device library (every setting names its source; settings without "
            "one are used only when allowed, with a warning), updated live while the probe is dragged, or a Pennes "
            "bioheat simulation with perfusion, vessels as heat sinks and all probes heating together. Reports "
            "coverage of the tumour and of tumour + margin (%), the minimal margin (mm) and the fraction of other "
            "structures in the zone (%). 'Plan probes' finds the fewest probes with clear straight paths that keep "
            "the margin (feasible only then); 'Re-plan' takes the probes as placed (markups lines) and proposes one "
            "added probe or a changed setting for what they leave. Planning aid for research, not a medical device. "
            "See <a href='https://github.com/imagio-slicer/SlicerIMAGIO'>the documentation</a>."
        )
        self.parent.acknowledgementText = (
            "Device zone sizes: the sources cited per setting in devices.json. Tissue properties: IT'IS "
            "Foundation database. Built on 3D Slicer, VTK, SimpleITK and numpy."
        )


@parameterNodeWrapper
class IMAGIOAblationZoneParameterNode:
    referenceVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    tumorSegmentID: str = ""            # segments by ID in ``segmentation`` (segment selectors; no name guessing)
    vesselSegmentIDs: list[str]
    avoidSegmentIDs: list[str]
    probeLine: vtkMRMLMarkupsLineNode
    tissue: Tissue = Tissue.AUTO
    deviceId: Annotated[str, Choice(DEVICE_IDS)] = "emprint"
    powerW: Annotated[float, WithinRange(0.0, 300.0)] = 100.0
    timeS: Annotated[float, WithinRange(0.0, 3600.0)] = 600.0
    model: ZoneModel = ZoneModel.TABLE
    marginMm: Annotated[float, WithinRange(0.0, 30.0)] = 5.0
    clearanceMm: Annotated[float, WithinRange(0.0, 30.0)] = 3.0
    liveUpdate: bool = True
    verifyBioheat: bool = False
    allowUnsourced: bool = False
    zoneSegmentation: vtkMRMLSegmentationNode
    resultsTable: vtkMRMLTableNode


class IMAGIOAblationZoneWidget(DicomExportWidgetMixin, SegmentSelectorsMixin, JobWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._observedLine = None
        self._zoneModel = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/IMAGIOAblationZone.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = IMAGIOAblationZoneLogic()  # the combo boxes are filled from the Choice annotations
        self.setupJobs(self.ui.progressBar, self.ui.statusLabel)
        self.setupDicomExport(moduleButtons=(self.ui.applyButton, self.ui.planButton, self.ui.replanButton))
        self.observeSceneClose()
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.planButton.connect("clicked(bool)", self.onPlanButton)
        self.ui.replanButton.connect("clicked(bool)", self.onReplanButton)
        self.connectSegmentSelectors()
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.updateSettingInfo)
        self.ui.powerSpinBox.connect("valueChanged(double)", self.updateSettingInfo)
        self.ui.timeSpinBox.connect("valueChanged(double)", self.updateSettingInfo)
        self.initializeParameterNode()

    def onSceneStartClose(self, caller, event) -> None:
        self.observeProbe(None)  # remove the observer from the closing scene's line (it must not survive it)
        DicomExportWidgetMixin.onSceneStartClose(self, caller, event)
        self._zoneModel = None
        if self.logic:
            self.logic.forgetScene()

    def initializeParameterNode(self) -> None:
        JobWidgetMixin.initializeParameterNode(self)
        p = self._parameterNode
        if not p.referenceVolume:
            p.referenceVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        p = self._parameterNode
        self.updateSegmentSelectors()
        running = self._jobButton if self.jobRunning else None  # only the running step's button (Cancel) is active
        ready = bool(p and p.probeLine and (p.referenceVolume or p.segmentation))
        self.ui.applyButton.enabled = ready if running is None else running is self.ui.applyButton
        self.ui.planButton.enabled = bool(p and p.segmentation) if running is None else running is self.ui.planButton
        self.ui.replanButton.enabled = bool(p and p.segmentation) if running is None else running is self.ui.replanButton
        self.observeProbe(p.probeLine if p else None)
        self.updateSettingInfo()

    def segmentSelectors(self):
        """The tumour, vessel and avoid selectors show ``segmentation`` (its own selector sets it) and hold IDs."""
        return (SegmentSelector(self.ui.tumorSegmentSelector, "segmentation", "tumorSegmentID", ownsNode=False),
                SegmentSelector(self.ui.vesselSegmentsSelector, "segmentation", "vesselSegmentIDs", ownsNode=False),
                SegmentSelector(self.ui.avoidSegmentsSelector, "segmentation", "avoidSegmentIDs", ownsNode=False))

    def observeProbe(self, lineNode) -> None:
        """Watch the probe line so the table zone follows it while it is dragged."""
        if lineNode is self._observedLine:
            return
        if self._observedLine is not None:
            self.removeObserver(self._observedLine, slicer.vtkMRMLMarkupsNode.PointModifiedEvent, self.onProbeMoved)
        self._observedLine = lineNode
        if lineNode is not None:
            self.addObserver(lineNode, slicer.vtkMRMLMarkupsNode.PointModifiedEvent, self.onProbeMoved)

    def onProbeMoved(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if not p or not p.liveUpdate or p.model is not ZoneModel.TABLE or caller.GetNumberOfControlPoints() < 2 or self.jobRunning:
            return
        try:
            self._zoneModel = self.logic.computeZone(p, self._zoneModel, live=True)
            self.showResult()
        except Exception as e:  # live feedback: show, never raise inside a VTK callback
            self.ui.statusLabel.text = f"Zone not updated: {e}"

    def updateSettingInfo(self, *args) -> None:
        p = self._parameterNode
        if not p or not self.logic:
            return
        self.ui.settingInfoLabel.text = self.logic.describeSetting(p.deviceId, p.powerW, p.timeS, p.allowUnsourced)

    def showResult(self) -> None:
        self.ui.statusLabel.text = self.logic.lastSummary
        self.ui.warningsLabel.text = "\n".join(f"Warning: {w}" for w in self.logic.lastWarnings)

    def onApplyButton(self) -> None:
        if self.jobRunning:  # the button is "Cancel"
            self.cancelJob()
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Failed to compute the ablation zone.", waitCursor=True):
            if p.model is ZoneModel.BIOHEAT:  # a simulation of seconds to minutes: in the background
                self.startJob(self.logic.startBioheat(p), self.onZoneDone, button=self.ui.applyButton,
                              what="Bioheat zone failed")
                return
            self._zoneModel = self.logic.computeZone(p, self._zoneModel, live=False)  # the table zone: milliseconds
            self.showResult()
            self.ui.resultsTableView.setMRMLTableNode(p.resultsTable)

    def onZoneDone(self, result) -> None:
        self._zoneModel = self.logic.applyZone(self._parameterNode, result, self._zoneModel)
        self.showResult()
        self.ui.resultsTableView.setMRMLTableNode(self._parameterNode.resultsTable)

    def onPlanButton(self) -> None:
        if self.jobRunning:  # the button is "Cancel"
            self.cancelJob()
            return
        with slicer.util.tryWithErrorDisplay("Failed to plan the probes.", waitCursor=True):
            self.startJob(self.logic.startPlan(self._parameterNode), self.onPlanDone, button=self.ui.planButton,
                          what="Probe planning failed")

    def onPlanDone(self, plan) -> None:
        self.logic.applyPlan(self._parameterNode, plan)
        self.showResult()
        self.ui.resultsTableView.setMRMLTableNode(self._parameterNode.resultsTable)

    def onReplanButton(self) -> None:
        if self.jobRunning:  # the button is "Cancel"
            self.cancelJob()
            return
        with slicer.util.tryWithErrorDisplay("Failed to re-plan from the placed probes.", waitCursor=True):
            lines = list(self.ui.placedProbesSelector.checkedNodes())
            self.startJob(self.logic.startReplan(self._parameterNode, lines), self.onReplanDone,
                          button=self.ui.replanButton, what="Re-plan failed")

    def onReplanDone(self, result) -> None:
        self.logic.applyReplan(self._parameterNode, result)
        self.showResult()
        self.ui.resultsTableView.setMRMLTableNode(self._parameterNode.resultsTable)


class IMAGIOAblationZoneLogic(DicomExportLogicMixin, ScriptedLoadableModuleLogic):
    """Thin adapter: the parameter node in, IMAGIOAblationZoneLib.logic.ModuleSession on slicer.mrmlScene."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        from IMAGIOAblationZoneLib.logic import ModuleSession

        self.impl = ModuleSession(slicer.mrmlScene)

    def getParameterNode(self):
        return IMAGIOAblationZoneParameterNode(super().getParameterNode())

    @property
    def lastSummary(self) -> str:
        return self.impl.last_summary

    @property
    def lastWarnings(self) -> list:
        return self.impl.last_warnings

    def forgetScene(self) -> None:
        self.impl.forget_scene()

    def describeSetting(self, deviceId: str, powerW: float, timeS: float, allowUnsourced: bool = False) -> str:
        return self.impl.describe_setting(deviceId, powerW, timeS, allowUnsourced)

    def computeZone(self, p, modelNode=None, live: bool = False):
        """Zone of the probe line with the chosen model; the zone segment, model and results table."""
        return self.impl.compute_zone(p, modelNode, live)

    def planProbes(self, p):
        """Plan probes for the tumour in this process (returns the PlanResult; see applyPlan)."""
        return self.applyPlan(p, self.impl.logic.plan(**self.impl.plan_request(p)))

    def startPlan(self, p):
        """planProbes as a background job (imagio.jobs.Job, Slicer's PythonSlicer); then applyPlan."""
        return self.impl.start_plan(p)

    def applyPlan(self, p, plan):
        """The planned zone, probe lines and table of a finished plan job."""
        self.impl.apply_plan(p, plan)
        logging.info(self.lastSummary)
        self.setExportResults("plan", *planExportData(p, plan))
        return plan

    def startBioheat(self, p):
        """The bioheat zone of the probe line as a background job; then applyZone."""
        return self.impl.start_bioheat(p)

    def applyZone(self, p, result, modelNode=None):
        """The zone segment, model and table of a finished bioheat job."""
        return self.impl.apply_zone(p, result, modelNode)

    def startReplan(self, p, lineNodes):
        """The re-plan from the probes as placed (markups lines) as a background job; then applyReplan."""
        return self.impl.start_replan(p, lineNodes)

    def applyReplan(self, p, result):
        """The zones, lines and table of a finished re-plan job (returns the ReplanResult)."""
        return self.impl.apply_replan(p, result)


def planExportData(p, plan) -> tuple:
    """``(plan.json content, description)`` of a finished probe plan, for the DICOM SR (as ``imagio ablation plan``
    writes it, with the tumour segment's name the SR groups its numbers under)."""
    data = plan.to_dict()
    segment = (p.segmentation.GetSegmentation().GetSegment(p.tumorSegmentID)
               if p.segmentation is not None and p.tumorSegmentID else None)
    tumor = segment.GetName() if segment is not None else ""
    data["inputs"] = {"tumor_segment": tumor}
    mam = data["minimal_margin_mm"]
    text = (f"the last probe plan (tumour '{tumor}': {data['probe_count']} probes, coverage of tumour + "
            f"{data['margin_mm']:g} mm {data['coverage_percent']:.2f} %, planned minimal margin "
            + ("none" if mam is None else f"{mam:.2f} mm") + ")")
    return data, text


class IMAGIOAblationZoneTest(ScriptedLoadableModuleTest):
    """Runs the logic on the digital phantom's liver tumour."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_zone_and_plan_on_phantom()

    def test_zone_and_plan_on_phantom(self):
        import numpy as np

        from imagio.mrml import add_line, segmentation_node_from_segments, volume_node_from_image
        from imagio.phantom import make_phantom

        self.delayDisplay("Building the phantom")
        ph = make_phantom(0)
        ct = volume_node_from_image(slicer.mrmlScene, ph.ct, "CT")
        seg = segmentation_node_from_segments(slicer.mrmlScene, list(ph.segments.values()), "Phantom", ct)
        tip = np.asarray(ph.liver_tumor_center_ras, float)
        line = add_line(slicer.mrmlScene, "Probe", tip + np.array([80.0, 40.0, 0.0]), tip)
        logic = IMAGIOAblationZoneLogic()
        p = logic.getParameterNode()
        p.referenceVolume, p.segmentation, p.probeLine = ct, seg, line
        p.deviceId, p.powerW, p.timeS = "emprint", 100.0, 600.0
        ids = seg.GetSegmentation().GetSegmentIdBySegmentName
        p.tumorSegmentID = ids("liver_tumor")
        p.avoidSegmentIDs = [ids(n) for n in ("hepatic_vessels", "ribs", "lungs")]
        logic.computeZone(p)
        self.assertTrue(p.zoneSegmentation is not None)
        self.assertIn("tumour", logic.lastSummary)
        plan = logic.planProbes(p)
        self.assertTrue(plan.feasible)
        self.assertGreaterEqual(plan.minimal_margin_mm, 5.0)
        res = logic.impl.replan_from_lines(p, [line])
        self.assertIsNotNone(res.placed.metrics["minimal_margin_mm"])
        self.delayDisplay("Test passed")
