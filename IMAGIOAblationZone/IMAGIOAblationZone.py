"""IMAGIOAblationZone: ablation zones from device tables and bioheat physics, and probe plans.

The algorithms live in ``IMAGIOAblationZoneLib`` (no Qt); this file is the
Slicer front end: module description, typed parameter node, widget and a thin
logic adapter over ``IMAGIOAblationZoneLib.logic.AblationZoneLogic``.
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
from imagio.slicer_widget import ParameterNodeWidgetMixin
from IMAGIOAblationZoneLib.devices import TISSUE_CHOICES, load_library

#: Device ids of the bundled library (the combo box choices): every device, also those whose settings are all
#: unsourced (they need "Allow unsourced settings").
DEVICE_IDS = list(load_library())
#: "auto": the tissue from the tumour segment's terminology or name, else liver (with a warning).
TISSUE_IDS = ["auto", *TISSUE_CHOICES]


class IMAGIOAblationZone(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "IMAGIO Ablation Zone"
        self.parent.categories = ["IMAGIO"]
        self.parent.dependencies = ["IMAGIOCommon"]
        self.parent.contributors = ["IMAGIO developers"]
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
    tumorSegmentName: str = "liver_tumor"
    vesselSegmentNames: str = "hepatic_vessels"
    avoidSegmentNames: str = "hepatic_vessels,ribs,lungs"
    probeLine: vtkMRMLMarkupsLineNode
    tissue: Annotated[str, Choice(TISSUE_IDS)] = "auto"
    deviceId: Annotated[str, Choice(DEVICE_IDS)] = "emprint"
    powerW: Annotated[float, WithinRange(0.0, 300.0)] = 100.0
    timeS: Annotated[float, WithinRange(0.0, 3600.0)] = 600.0
    model: Annotated[str, Choice(["table", "bioheat"])] = "table"
    marginMm: Annotated[float, WithinRange(0.0, 30.0)] = 5.0
    clearanceMm: Annotated[float, WithinRange(0.0, 30.0)] = 3.0
    liveUpdate: bool = True
    verifyBioheat: bool = False
    allowUnsourced: bool = False
    zoneSegmentation: vtkMRMLSegmentationNode
    resultsTable: vtkMRMLTableNode


class IMAGIOAblationZoneWidget(ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
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
        self.observeSceneClose()
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.planButton.connect("clicked(bool)", self.onPlanButton)
        self.ui.replanButton.connect("clicked(bool)", self.onReplanButton)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.updateSettingInfo)
        self.ui.powerSpinBox.connect("valueChanged(double)", self.updateSettingInfo)
        self.ui.timeSpinBox.connect("valueChanged(double)", self.updateSettingInfo)
        self.initializeParameterNode()

    def onSceneStartClose(self, caller, event) -> None:
        self.observeProbe(None)  # remove the observer from the closing scene's line (it must not survive it)
        ParameterNodeWidgetMixin.onSceneStartClose(self, caller, event)
        self._zoneModel = None
        if self.logic:
            self.logic.forgetScene()

    def initializeParameterNode(self) -> None:
        ParameterNodeWidgetMixin.initializeParameterNode(self)
        p = self._parameterNode
        if not p.referenceVolume:
            p.referenceVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        p = self._parameterNode
        ready = bool(p and p.probeLine and (p.referenceVolume or p.segmentation))
        self.ui.applyButton.enabled = ready
        self.ui.planButton.enabled = bool(p and p.segmentation)
        self.ui.replanButton.enabled = bool(p and p.segmentation)
        self.observeProbe(p.probeLine if p else None)
        self.updateSettingInfo()

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
        if not p or not p.liveUpdate or p.model != "table" or caller.GetNumberOfControlPoints() < 2:
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
        with slicer.util.tryWithErrorDisplay("Failed to compute the ablation zone.", waitCursor=True):
            self._zoneModel = self.logic.computeZone(self._parameterNode, self._zoneModel, live=False)
            self.showResult()
            self.ui.resultsTableView.setMRMLTableNode(self._parameterNode.resultsTable)

    def onPlanButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to plan the probes.", waitCursor=True):
            self.logic.planProbes(self._parameterNode)
            self.showResult()
            self.ui.resultsTableView.setMRMLTableNode(self._parameterNode.resultsTable)

    def onReplanButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to re-plan from the placed probes.", waitCursor=True):
            lines = list(self.ui.placedProbesSelector.checkedNodes())
            self.logic.replanFromLines(self._parameterNode, lines)
            self.showResult()
            self.ui.resultsTableView.setMRMLTableNode(self._parameterNode.resultsTable)


class IMAGIOAblationZoneLogic(ScriptedLoadableModuleLogic):
    """Thin adapter: Slicer nodes in, IMAGIOAblationZoneLib.logic.AblationZoneLogic on slicer.mrmlScene."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        from IMAGIOAblationZoneLib.logic import AblationZoneLogic

        self.impl = AblationZoneLogic(slicer.mrmlScene)
        self._context = None
        self._contextKey = None
        self._vessels = []
        self._ownTables = set()  # IDs of the table nodes this module made (only those are ever replaced)
        self.lastSummary = ""
        self.lastWarnings = []

    def getParameterNode(self):
        return IMAGIOAblationZoneParameterNode(super().getParameterNode())

    def forgetScene(self) -> None:
        """Drop everything that refers to nodes of a closing scene."""
        self._context = self._contextKey = None
        self._ownTables = set()

    def describeSetting(self, deviceId: str, powerW: float, timeS: float, allowUnsourced: bool = False) -> str:
        from imagio.errors import ImagioError

        try:
            dev, s = self.impl.setting(deviceId, powerW, timeS, allowUnsourced)
        except ImagioError as e:
            return str(e)
        text = f"zone {s.zone_long_mm:.1f} x {s.zone_short_mm:.1f} mm, centre {s.tip_offset_mm:.1f} mm behind the tip"
        source = "; ".join(f"{src.citation.split('.')[0]} ({src.locator.split(' (')[0]})" for src in s.sources)
        return (text + (f" ({s.note})" if s.interpolated else " (table setting)")
                + (f"; source: {source}" if source else "; NO SOURCE") + (f"; measured in {s.tissue}"))

    def _tissue(self, p):
        return None if p.tissue == "auto" else p.tissue

    def _segments(self, p, names: str):
        from imagio.mrml import segments_from_segmentation_node

        wanted = [n.strip().lower() for n in (names or "").split(",") if n.strip()]
        if not p.segmentation or not wanted:
            return {}
        segs = segments_from_segmentation_node(p.segmentation, p.referenceVolume)
        return {s.name: s.mask for s in segs if s.name.lower() in wanted}

    def context(self, p):
        """The cached tumour/structure context; rebuilt when the inputs or the segments' content change."""
        from imagio.errors import ImagioError
        from imagio.mrml import image_from_volume_node, segments_from_segmentation_node
        from IMAGIOAblationZoneLib.logic import _segment_terminology, segmentation_stamp

        key = (p.referenceVolume.GetID() if p.referenceVolume else None, segmentation_stamp(p.segmentation),
               p.tumorSegmentName, p.vesselSegmentNames, p.marginMm, p.tissue)
        if key == self._contextKey:
            return self._context
        tumor = None
        others = {}
        vesselNames = {n.strip().lower() for n in (p.vesselSegmentNames or "").split(",") if n.strip()}
        terminology = ""
        if p.segmentation:
            for s in segments_from_segmentation_node(p.segmentation, p.referenceVolume):
                if s.name.lower() == (p.tumorSegmentName or "").strip().lower():
                    tumor = s.mask
                else:
                    others[s.name] = s.mask  # every other segment: its fraction inside the zone is reported
            if tumor is None:
                raise ImagioError(f"No segment named '{p.tumorSegmentName}'", "Type the tumour segment's name")
            terminology = _segment_terminology(p.segmentation, p.tumorSegmentName)
        if p.referenceVolume:
            grid = image_from_volume_node(p.referenceVolume)
        elif tumor is not None:
            grid = tumor
        else:
            raise ImagioError("No reference volume or segmentation", "Choose the CT or a segmentation")
        self._context = self.impl.prepare(grid, tumor, others, p.marginMm, self._tissue(p), p.tumorSegmentName or "",
                                          terminology)
        self._vessels = [name for name in others if name.lower() in vesselNames]
        self._contextKey = key
        return self._context

    def _table(self, p, name: str, rows):
        """A results table: the module's own previous table is replaced, a table the user chose is never touched."""
        from imagio.mrml import add_table

        old = p.resultsTable
        if old is not None and old.GetID() in self._ownTables:
            self._ownTables.discard(old.GetID())
            slicer.mrmlScene.RemoveNode(old)
        node = add_table(slicer.mrmlScene, name, rows)
        self._ownTables.add(node.GetID())
        p.resultsTable = node
        return node

    def _outputSegmentation(self, p):
        if p.zoneSegmentation is not None and p.zoneSegmentation is p.segmentation:
            from imagio.errors import ImagioError

            raise ImagioError("The zone segmentation is the input segmentation", "Choose or create another node")
        return p.zoneSegmentation

    def computeZone(self, p, modelNode=None, live: bool = False):
        """Zone of the probe line with the chosen model; writes the zone segment, model and results table."""
        import numpy as np

        target = self._outputSegmentation(p)
        ctx = self.context(p)
        tip, entry = self.impl.probe_from_line(p.probeLine)
        if p.model == "bioheat" and not live:
            vessels = None
            if self._vessels:
                vessels = np.any([ctx.others[n] for n in self._vessels], axis=0)
            result = self.impl.bioheat_zone(ctx, tip, entry, p.deviceId, p.powerW, p.timeS, vessels=vessels,
                                            allow_unsourced=p.allowUnsourced)
        else:
            result = self.impl.table_zone(ctx, tip, entry, p.deviceId, p.powerW, p.timeS, p.allowUnsourced)
        seg, model = self.impl.update_zone_nodes(result, target, modelNode)
        if not p.zoneSegmentation:
            p.zoneSegmentation = seg
        self.lastSummary = result.summary_text().split("\n")[0]
        self.lastWarnings = list(result.warnings)
        if not live:
            self._table(p, "Ablation zone results", result.table_rows())
        return model

    def planProbes(self, p):
        """Plan probes for the tumour; probe lines, the planned zone (into the chosen zone segmentation, or a new
        one) and a results table. Returns the PlanResult."""
        from imagio.errors import ImagioError
        from IMAGIOAblationZoneLib.logic import write_zone_segment

        if not p.segmentation:
            raise ImagioError("No segmentation", "Choose the segmentation with the tumour")
        target = self._outputSegmentation(p)
        avoid = [n.strip() for n in (p.avoidSegmentNames or "").split(",") if n.strip()]
        sinks = [n.strip() for n in (p.vesselSegmentNames or "").split(",") if n.strip()] if p.verifyBioheat else []
        plan = self.impl.plan_nodes(p.referenceVolume, p.segmentation, p.tumorSegmentName, p.deviceId,
                                    avoid_segments=avoid, heat_sink_segments=sinks, margin_mm=p.marginMm,
                                    clearance_mm=p.clearanceMm, verify_bioheat=p.verifyBioheat,
                                    tissue=self._tissue(p), allow_unsourced=p.allowUnsourced)
        if plan.union_mask is not None and plan.probes:
            p.zoneSegmentation = write_zone_segment(slicer.mrmlScene, plan.union_mask, target, "planned_ablation_zone",
                                                    "Planned ablation zone")
            from imagio.mrml import add_line

            for n, probe in enumerate(plan.probes):
                add_line(slicer.mrmlScene, f"Planned probe {n + 1}", probe.entry_ras, probe.tip_ras)
        self._table(p, "Ablation plan", plan.table_rows())
        self.lastSummary = plan.summary_text().split("\n")[0] + " " + plan.reason
        self.lastWarnings = list(plan.warnings)
        logging.info(self.lastSummary)
        return plan

    def replanFromLines(self, p, lineNodes):
        """Re-plan from the probes as placed (markups lines: point 0 entry, point 1 tip) at the chosen setting."""
        from imagio.errors import ImagioError
        from imagio.mrml import image_from_volume_node, segments_from_segmentation_node
        from IMAGIOAblationZoneLib.logic import _segment_terminology, body_from_ct

        if not p.segmentation:
            raise ImagioError("No segmentation", "Choose the segmentation with the tumour")
        if not lineNodes:
            raise ImagioError("No placed probe", "Check the markups lines of the probes as placed")
        placed = [self.impl.probe_from_line(n) for n in lineNodes]
        tumor = segments_from_segmentation_node(p.segmentation, p.referenceVolume, [p.tumorSegmentName])[0]
        grid = image_from_volume_node(p.referenceVolume) if p.referenceVolume else tumor.mask
        avoid = self._segments(p, p.avoidSegmentNames)
        body = body_from_ct(grid) if p.referenceVolume else None
        res = self.impl.replan(grid, tumor.mask, placed, p.deviceId, p.powerW, p.timeS, p.marginMm, avoid, body,
                               p.clearanceMm, self._tissue(p), tumor.name,
                               _segment_terminology(p.segmentation, p.tumorSegmentName), p.allowUnsourced)
        nodes = res.add_to_scene(slicer.mrmlScene, p.referenceVolume, "Re-plan")
        if p.resultsTable is not None and p.resultsTable.GetID() in self._ownTables:
            self._ownTables.discard(p.resultsTable.GetID())
            slicer.mrmlScene.RemoveNode(p.resultsTable)
        self._ownTables.add(nodes["table"].GetID())
        p.resultsTable = nodes["table"]
        self.lastSummary = res.summary_text().split("\n")[0] + " " + res.reason
        self.lastWarnings = list(res.warnings)
        return res


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
        p.tumorSegmentName, p.avoidSegmentNames = "liver_tumor", "hepatic_vessels,ribs,lungs"
        logic.computeZone(p)
        self.assertTrue(p.zoneSegmentation is not None)
        self.assertIn("tumour", logic.lastSummary)
        plan = logic.planProbes(p)
        self.assertTrue(plan.feasible)
        self.assertGreaterEqual(plan.minimal_margin_mm, 5.0)
        res = logic.replanFromLines(p, [line])
        self.assertIsNotNone(res.placed.metrics["minimal_margin_mm"])
        self.delayDisplay("Test passed")
