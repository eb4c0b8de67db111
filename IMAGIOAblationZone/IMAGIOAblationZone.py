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
from IMAGIOAblationZoneLib.devices import load_library

#: Device ids of the bundled library (the combo box choices).
DEVICE_IDS = list(load_library())


class IMAGIOAblationZone(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "IMAGIO Ablation Zone"
        self.parent.categories = ["IMAGIO"]
        self.parent.dependencies = ["IMAGIOCommon"]
        self.parent.contributors = ["IMAGIO developers"]
        self.parent.helpText = (
            "Predicted thermal ablation zones for a probe placed with a markups line (point 1: entry on the skin, "
            "point 2: tip): ellipsoids from published device tables (approximate ex-vivo values, each with its "
            "source), updated live while the probe is dragged, or a Pennes bioheat simulation with perfusion and "
            "vessels as heat sinks. Reports coverage of the tumour and of tumour + margin (%), the minimal margin "
            "(mm) and the fraction of other structures in the zone (%). 'Plan probes' finds the fewest probes with "
            "clear straight paths that cover tumour + margin. Planning aid for research, not a medical device. See "
            "<a href='https://github.com/imagio-slicer/SlicerIMAGIO'>the documentation</a>."
        )
        self.parent.acknowledgementText = (
            "Device zone sizes: manufacturer charts and papers cited in devices.json. Tissue properties: IT'IS "
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
    deviceId: Annotated[str, Choice(DEVICE_IDS)] = "emprint"
    powerW: Annotated[float, WithinRange(0.0, 300.0)] = 100.0
    timeS: Annotated[float, WithinRange(0.0, 3600.0)] = 600.0
    model: Annotated[str, Choice(["table", "bioheat"])] = "table"
    marginMm: Annotated[float, WithinRange(0.0, 30.0)] = 5.0
    clearanceMm: Annotated[float, WithinRange(0.0, 30.0)] = 3.0
    liveUpdate: bool = True
    verifyBioheat: bool = False
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
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.updateSettingInfo)
        self.ui.powerSpinBox.connect("valueChanged(double)", self.updateSettingInfo)
        self.ui.timeSpinBox.connect("valueChanged(double)", self.updateSettingInfo)
        self.initializeParameterNode()

    def onSceneStartClose(self, caller, event) -> None:
        ParameterNodeWidgetMixin.onSceneStartClose(self, caller, event)
        self._zoneModel = None
        self._observedLine = None

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
            self.ui.statusLabel.text = self.logic.lastSummary
        except Exception as e:  # live feedback: show, never raise inside a VTK callback
            self.ui.statusLabel.text = f"Zone not updated: {e}"

    def updateSettingInfo(self, *args) -> None:
        p = self._parameterNode
        if not p or not self.logic:
            return
        self.ui.settingInfoLabel.text = self.logic.describeSetting(p.deviceId, p.powerW, p.timeS)

    def onApplyButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to compute the ablation zone.", waitCursor=True):
            self._zoneModel = self.logic.computeZone(self._parameterNode, self._zoneModel, live=False)
            self.ui.statusLabel.text = self.logic.lastSummary
            self.ui.resultsTableView.setMRMLTableNode(self._parameterNode.resultsTable)

    def onPlanButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to plan the probes.", waitCursor=True):
            self.logic.planProbes(self._parameterNode)
            self.ui.statusLabel.text = self.logic.lastSummary
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
        self.lastSummary = ""

    def getParameterNode(self):
        return IMAGIOAblationZoneParameterNode(super().getParameterNode())

    def describeSetting(self, deviceId: str, powerW: float, timeS: float) -> str:
        from imagio.errors import ImagioError

        try:
            dev, s = self.impl.setting(deviceId, powerW, timeS)
        except ImagioError as e:
            return str(e)
        text = f"zone {s.zone_long_mm:.1f} x {s.zone_short_mm:.1f} mm, centre {s.tip_offset_mm:.1f} mm behind the tip"
        return text + (f" ({s.note})" if s.interpolated else " (table setting)")

    def _segments(self, p, names: str):
        from imagio.mrml import segments_from_segmentation_node

        wanted = [n.strip().lower() for n in (names or "").split(",") if n.strip()]
        if not p.segmentation or not wanted:
            return {}
        segs = segments_from_segmentation_node(p.segmentation, p.referenceVolume)
        return {s.name: s.mask for s in segs if s.name.lower() in wanted}

    def context(self, p):
        """The cached tumour/structure context; rebuilt when the inputs change."""
        from imagio.errors import ImagioError
        from imagio.mrml import image_from_volume_node

        key = (p.referenceVolume.GetID() if p.referenceVolume else None,
               p.segmentation.GetID() if p.segmentation else None,
               p.segmentation.GetMTime() if p.segmentation else 0, p.tumorSegmentName, p.vesselSegmentNames, p.marginMm)
        if key == self._contextKey:
            return self._context
        from imagio.mrml import segments_from_segmentation_node

        tumor = None
        others = {}
        vesselNames = {n.strip().lower() for n in (p.vesselSegmentNames or "").split(",") if n.strip()}
        if p.segmentation:
            for s in segments_from_segmentation_node(p.segmentation, p.referenceVolume):
                if s.name.lower() == (p.tumorSegmentName or "").strip().lower():
                    tumor = s.mask
                else:
                    others[s.name] = s.mask  # every other segment: its fraction inside the zone is reported
            if tumor is None:
                raise ImagioError(f"No segment named '{p.tumorSegmentName}'", "Type the tumour segment's name")
        if p.referenceVolume:
            grid = image_from_volume_node(p.referenceVolume)
        elif tumor is not None:
            grid = tumor
        else:
            raise ImagioError("No reference volume or segmentation", "Choose the CT or a segmentation")
        self._context = self.impl.prepare(grid, tumor, others, p.marginMm)
        self._vessels = [name for name in others if name.lower() in vesselNames]
        self._contextKey = key
        return self._context

    def computeZone(self, p, modelNode=None, live: bool = False):
        """Zone of the probe line with the chosen model; writes the zone segment, model and results table."""
        import numpy as np

        from imagio.errors import ImagioError
        from imagio.mrml import add_table

        if p.zoneSegmentation is not None and p.zoneSegmentation is p.segmentation:
            raise ImagioError("The zone segmentation is the input segmentation", "Choose or create another node")
        ctx = self.context(p)
        tip, entry = self.impl.probe_from_line(p.probeLine)
        if p.model == "bioheat" and not live:
            vessels = None
            if self._vessels:
                vessels = np.any([ctx.others[n] for n in self._vessels], axis=0)
            result = self.impl.bioheat_zone(ctx, tip, entry, p.deviceId, p.powerW, p.timeS, vessels=vessels)
        else:
            result = self.impl.table_zone(ctx, tip, entry, p.deviceId, p.powerW, p.timeS)
        seg, model = self.impl.update_zone_nodes(result, p.zoneSegmentation, modelNode)
        if not p.zoneSegmentation:
            p.zoneSegmentation = seg
        m = result.metrics
        self.lastSummary = (f"{m['model']} zone " + " x ".join(f"{a:.1f}" for a in m["zone_axes_mm"]) + " mm"
                            + (f"; tumour {m['coverage_percent']:.1f} %, tumour + margin "
                               f"{m['margin_coverage_percent']:.1f} %, minimal margin {m['minimal_margin_mm']:.1f} mm"
                               if "coverage_percent" in m else ""))
        if not live:
            rows = [{"quantity": k, "value": v} for k, v in m.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)]
            rows += [{"quantity": f"{name} in zone (%)", "value": v}
                     for name, v in m.get("structures_in_zone_percent", {}).items()]
            if p.resultsTable:
                slicer.mrmlScene.RemoveNode(p.resultsTable)
            p.resultsTable = add_table(slicer.mrmlScene, "Ablation zone results", rows)
        return model

    def planProbes(self, p) -> dict:
        """Plan probes for the tumour; adds probe lines, zone segmentation and a results table."""
        from imagio.errors import ImagioError
        from imagio.io import Segment
        from imagio.mrml import add_line, add_table, image_from_volume_node, segmentation_node_from_segments

        if not p.segmentation:
            raise ImagioError("No segmentation", "Choose the segmentation with the tumour")
        tumor = self._segments(p, p.tumorSegmentName)
        if not tumor:
            raise ImagioError(f"No segment named '{p.tumorSegmentName}'", "Type the tumour segment's name")
        tumor = next(iter(tumor.values()))
        grid = image_from_volume_node(p.referenceVolume) if p.referenceVolume else tumor
        avoid = self._segments(p, p.avoidSegmentNames)
        body = None
        if p.referenceVolume:
            from IMAGIOAblationZoneLib.cli import body_from_ct

            body = body_from_ct(grid)
        sinks = None
        if p.verifyBioheat:
            vessels = self._segments(p, p.vesselSegmentNames)
            if vessels:
                import numpy as np
                import SimpleITK as sitk

                sinks = np.any([sitk.GetArrayFromImage(m) > 0 for m in vessels.values()], axis=0)
        plan, d = self.impl.plan(grid, tumor, p.deviceId, p.marginMm, avoid, body, p.clearanceMm,
                                 verify_bioheat=p.verifyBioheat, heat_sinks=sinks)
        if plan.union_mask is not None and plan.probes:
            p.zoneSegmentation = segmentation_node_from_segments(
                slicer.mrmlScene, [Segment("planned_ablation_zone", plan.union_mask, (1.0, 0.65, 0.0))],
                "Planned ablation zone", p.referenceVolume)
            for n, probe in enumerate(plan.probes):
                add_line(slicer.mrmlScene, f"Planned probe {n + 1}", probe.entry_ras, probe.tip_ras)
        rows = [{"probe": n + 1, "power_w": pr["power_w"], "time_s": pr["time_s"],
                 "tip_ras": ",".join(f"{v:.1f}" for v in pr["tip_ras"]),
                 "entry_ras": ",".join(f"{v:.1f}" for v in pr["entry_ras"]),
                 "path_length_mm": pr["path_length_mm"]} for n, pr in enumerate(d["probes"])]
        p.resultsTable = add_table(slicer.mrmlScene, "Ablation plan", rows or [{"feasible": "no", "reason": plan.reason}])
        self.lastSummary = (("Feasible: " if d["feasible"] else "Not feasible: ") + d["reason"]
                            + f" (tumour coverage {plan.tumor_coverage_percent:.1f} %)")
        logging.info(self.lastSummary)
        return d


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
        logic.computeZone(p)
        self.assertTrue(p.zoneSegmentation is not None)
        self.assertIn("tumour", logic.lastSummary)
        d = logic.planProbes(p)
        self.assertTrue(d["feasible"])
        self.assertGreaterEqual(d["coverage_percent"], 99.0)
        self.delayDisplay("Test passed")
