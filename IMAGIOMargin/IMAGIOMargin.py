"""IMAGIOMargin: post-ablation margin assessment (minimal ablative margin, coverage, uncertainty, verdict).

The algorithms live in ``IMAGIOMarginLib`` (no Qt); this file is the Slicer
front end: module description, typed parameter node, widget and a thin logic
adapter over ``IMAGIOMarginLib.logic.MarginLogic``.
"""

import logging
from typing import Annotated

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
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
from IMAGIOMarginLib.options import Registration


class IMAGIOMargin(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "IMAGIO Margin"
        self.parent.categories = ["IGT.IMAGIO"]
        self.parent.dependencies = ["IMAGIOCommon"]
        self.parent.contributors = ["IMAGIO developers (imagio-slicer project)"]
        self.parent.helpText = (
            "Post-ablation margin assessment. Choose the tumour (segmented on the pre-treatment CT) and the ablation "
            "zone (segmented on the post-treatment CT); register the CTs (none, rigid, or deformable with the tumour "
            "kept rigid) and press Apply. Reports the minimal ablative margin (mm, negative when tumour is left "
            "outside the zone, with the residual tumour volume in ml), tumour coverage and 0/3/5/10 mm shell "
            "coverage (%), the thinnest point (a markup), a 95% interval of the margin and the probability that it "
            "reaches the threshold under the registration (default: the published mean TRE 1.62 mm, 1.02 mm per axis), "
            "rotation and segmentation-boundary uncertainties (default 0.35 mm, measured between four readers), and a "
            "verdict. With a planned zone (IMAGIOAblationZone) it adds the volume planned but not ablated (ml) and a "
            "per-sector table of where the achieved zone falls short of the plan. The "
            "tumour surface is coloured by its margin (mm); the histogram is shown as a plot. Research tool, not a "
            "medical device. See <a href='https://github.com/imagio-slicer/SlicerIMAGIO'>the documentation</a>."
        )
        self.parent.acknowledgementText = (
            "Thresholds from the ablation-margin literature (minimal margin >= 5 mm, 3 mm and 6 mm shells). Built on "
            "3D Slicer, VTK, SimpleITK and numpy."
        )


@parameterNodeWrapper
class IMAGIOMarginParameterNode:
    preCT: vtkMRMLScalarVolumeNode
    postCT: vtkMRMLScalarVolumeNode
    tumorSegmentation: vtkMRMLSegmentationNode
    tumorSegmentID: str = ""            # segments by ID (segment selectors; never guessed from names)
    zoneSegmentation: vtkMRMLSegmentationNode
    zoneSegmentID: str = ""
    registration: Registration = Registration.NONE
    thresholdMm: Annotated[float, WithinRange(0.0, 30.0)] = 5.0
    sigmaMm: Annotated[float, WithinRange(0.0, 10.0)] = 1.02  # IMAGIOMarginLib.uncertainty.DEFAULT_SIGMA_MM
    rotationSigmaDeg: Annotated[float, WithinRange(0.0, 20.0)] = 0.0
    boundarySigmaMm: Annotated[float, WithinRange(0.0, 5.0)] = 0.35  # uncertainty.SEGMENTATION_SIGMA_MM
    acceptRegistration: bool = False
    plannedZoneSegmentation: vtkMRMLSegmentationNode
    plannedZoneSegmentID: str = ""
    resultsTable: vtkMRMLTableNode


class IMAGIOMarginWidget(DicomExportWidgetMixin, SegmentSelectorsMixin, JobWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/IMAGIOMargin.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = IMAGIOMarginLogic()  # the registration combo box is filled from the Registration Enum
        self.setupJobs(self.ui.progressBar, self.ui.statusLabel)  # registration runs in a background process
        self.setupDicomExport(moduleButtons=(self.ui.applyButton,))
        self.observeSceneClose()
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.connectSegmentSelectors()
        self.initializeParameterNode()

    def segmentSelectors(self):
        return (SegmentSelector(self.ui.tumorSegmentSelector, "tumorSegmentation", "tumorSegmentID"),
                SegmentSelector(self.ui.zoneSegmentSelector, "zoneSegmentation", "zoneSegmentID"),
                SegmentSelector(self.ui.plannedZoneSegmentSelector, "plannedZoneSegmentation", "plannedZoneSegmentID"))

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        self.updateSegmentSelectors()
        p = self._parameterNode
        if self.jobRunning:
            return  # Apply is Cancel while the registration runs
        ready = bool(p and p.tumorSegmentation and p.tumorSegmentID and p.zoneSegmentation and p.zoneSegmentID)
        if ready and p.plannedZoneSegmentation:
            ready = bool(p.plannedZoneSegmentID)
        if ready and p.registration is not Registration.NONE:
            ready = bool(p.preCT and p.postCT)
        self.ui.applyButton.enabled = ready

    def onApplyButton(self) -> None:
        if self.jobRunning:  # the button is "Cancel"
            self.cancelJob()
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Failed to assess the ablation margin.", waitCursor=True):
            if p.registration is not Registration.NONE:  # registration: seconds to minutes, in a background process
                self.startJob(self.logic.startProcess(p), lambda result: self.showNodes(self.logic.addResult(p, result)),
                              button=self.ui.applyButton, what="Margin assessment failed")
                return
            self.showNodes(self.logic.process(p)[1])

    def showNodes(self, nodes) -> None:
        self.ui.statusLabel.text = self.logic.lastSummary
        self.ui.resultsTableView.setMRMLTableNode(nodes.table)
        self.ui.planTableView.setMRMLTableNode(nodes.plan_table)
        self.ui.planLabel.visible = nodes.plan_table is not None
        self.ui.planTableView.visible = nodes.plan_table is not None
        self.logic.showHistogram(nodes.plot_chart)


class IMAGIOMarginLogic(DicomExportLogicMixin, ScriptedLoadableModuleLogic):
    """Thin adapter: Slicer nodes in, IMAGIOMarginLib.logic.MarginLogic on slicer.mrmlScene."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        from IMAGIOMarginLib.logic import MarginLogic

        self.impl = MarginLogic(slicer.mrmlScene)
        self.lastSummary = ""

    def getParameterNode(self):
        return IMAGIOMarginParameterNode(super().getParameterNode())

    def assessNodes(self, tumorSegmentation, tumorSegmentID: str, zoneSegmentation, zoneSegmentID: str,
                    preCT=None, postCT=None, **options):
        """The MarginResult of the segments chosen by ID in these nodes (no name or first-segment guess), in this
        process; options as MarginLogic.assess_nodes (register_mode, planned_zone_node, planned_zone_segment_id...)."""
        return self.impl.assess_nodes(tumorSegmentation, tumorSegmentID, zoneSegmentation, zoneSegmentID, preCT,
                                      postCT, **options)

    def process(self, p):
        """Assess the margin of the parameter node's choice in this process; returns (MarginResult, MarginNodes)."""
        from IMAGIOMarginLib.jobs import parameter_request

        nodes_args, options = parameter_request(p)
        result = self.assessNodes(*nodes_args, **options)
        return result, self.addResult(p, result)

    def startProcess(self, p):
        """The same as a background job (IMAGIOMarginLib.jobs; imagio.jobs.Job): then addResult."""
        from IMAGIOMarginLib.jobs import parameter_request, start_assessment_nodes

        nodes_args, options = parameter_request(p)
        return start_assessment_nodes(*nodes_args, **options)

    def addResult(self, p, result):
        """The MarginResult's nodes (returned) and the summary line."""
        nodes = self.impl.add_to_scene(result, "Margin")
        p.resultsTable = nodes.table
        from IMAGIOMarginLib.logic import panel_text

        self.lastSummary = panel_text(result)
        logging.info(self.lastSummary)
        self.setExportResults("margin", *marginExportData(p, result))
        return nodes

    @staticmethod
    def showHistogram(chartNode) -> None:
        """Show the margin histogram chart in the layout's plot view."""
        slicer.modules.plots.logic().ShowChartInLayout(chartNode)


def marginExportData(p, result) -> tuple:
    """``(margin.json content, description)`` of a finished assessment, for the DICOM SR (as ``imagio margin``
    writes it, with the tumour and zone segment names the SR groups its numbers under)."""

    def name(node, segmentID):
        segment = node.GetSegmentation().GetSegment(segmentID) if node is not None and segmentID else None
        return segment.GetName() if segment is not None else ""

    data = result.to_dict()
    tumor, zone = name(p.tumorSegmentation, p.tumorSegmentID), name(p.zoneSegmentation, p.zoneSegmentID)
    data["inputs"] = {"tumor_segment": tumor, "ablation_segment": zone}
    text = (f"the last margin assessment (tumour '{tumor}', zone '{zone}': minimal margin "
            f"{data['minimal_margin_mm']:.2f} mm, coverage {data['coverage_percent']:.2f} %, residual tumour "
            f"{data['residual_tumor_ml']:.3f} ml, shell coverages in %)")
    return data, text


class IMAGIOMarginTest(ScriptedLoadableModuleTest):
    """Runs the logic on the digital phantom's liver tumour with a synthetic ablation zone."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_margin_on_phantom()

    def test_margin_on_phantom(self):
        from imagio.io import Segment
        from imagio.mrml import segmentation_node_from_segments, volume_node_from_image
        from imagio.phantom import make_phantom
        from IMAGIOMarginLib.demo import synthetic_zone

        self.delayDisplay("Building the phantom")
        ph = make_phantom(0)
        ct = volume_node_from_image(slicer.mrmlScene, ph.ct, "CT")
        tumor = ph.segments["liver_tumor"]
        tseg = segmentation_node_from_segments(slicer.mrmlScene, [tumor], "Tumour", ct)
        zone = Segment("ablation zone", synthetic_zone(tumor.mask, extra_mm=8.0, offset_ras=(0.0, 0.0, 0.0)))
        zseg = segmentation_node_from_segments(slicer.mrmlScene, [zone], "Zone", ct)
        logic = IMAGIOMarginLogic()
        p = logic.getParameterNode()
        p.tumorSegmentation, p.zoneSegmentation = tseg, zseg
        p.tumorSegmentID = tseg.GetSegmentation().GetSegmentIdBySegmentName("liver_tumor")
        p.zoneSegmentID = zseg.GetSegmentation().GetSegmentIdBySegmentName("ablation zone")
        p.preCT, p.postCT = ct, ct
        result, nodes = logic.process(p)
        d = result.to_dict()
        self.assertEqual(d["coverage_percent"], 100.0)
        self.assertGreater(d["minimal_margin_mm"], 5.0)
        self.assertEqual(d["verdict"], "sufficient")
        self.assertEqual(nodes.thinnest.GetNumberOfControlPoints(), 1)
        self.assertIsNotNone(nodes.model.GetPolyData().GetPointData().GetArray("margin_mm"))
        self.delayDisplay("Test passed")
