"""IMAGIOPlanning: lesion segmentation with nnU-Net-class ONNX models (no PyTorch) or from one click.

The algorithms live in IMAGIOPlanningLib (no Qt; they run on any vtkMRMLScene). This file holds the
Slicer module, its typed parameter node, the widget, a thin Logic adapter and the self-test. Model
inference runs in a separate process (IMAGIOPlanningLib/worker.py, started with Slicer's Python), so
Slicer never freezes; Apply turns into Cancel while it runs.
"""

import logging
import pathlib
from typing import Annotated

import slicer
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

try:  # the shared core is put on sys.path by the hidden IMAGIOCommon module
    import IMAGIOCommon  # noqa: F401
except ImportError:
    pass

from imagio.dicom_export import DicomExportLogicMixin
from imagio.jobs import python_executable
from imagio.slicer_widget import DicomExportWidgetMixin, JobWidgetMixin, offerPackages, packageAvailable
from imagio.slicer_widget import requiredPackages as sharedRequiredPackages
from IMAGIOPlanningLib.options import LesionKind, Method

#: what the model needs inside Slicer and Slicer does not bundle (installed only with the user's consent)
REQUIREMENTS = pathlib.Path(__file__).resolve().parent / "Resources" / "requirements.txt"


class IMAGIOPlanning(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "IMAGIO Planning"
        self.parent.categories = ["IGT.IMAGIO"]
        self.parent.dependencies = ["IMAGIOCommon"]
        self.parent.contributors = ["IMAGIO developers (imagio-slicer project)"]
        self.parent.helpText = (
            "Lesion segmentation for interventional planning. <b>Model</b>: runs an nnU-Net-class 3D model "
            "exported to ONNX (<code>imagio export-onnx</code>) on ONNX Runtime, without PyTorch, in a background "
            "process with progress and cancel; the model card beside the .onnx gives spacing, normalisation, "
            "patch size and label names with SNOMED CT codes. Slicer does not include ONNX Runtime: the first "
            "model run asks before installing it (onnxruntime from pypi.org, nothing else). The shipped 'phantom-lesions' model is a "
            "demonstration trained on synthetic data and is not for clinical use. <b>Seed</b>: one point inside "
            "a lung nodule, liver tumour or soft-tissue mass (optional radius in mm) and no model. Volumes are "
            "reported in ml. Results are new segmentations you can correct in the Segment Editor. "
            "See <a href='https://github.com/imagio-slicer/SlicerIMAGIO'>the documentation</a>."
        )
        self.parent.acknowledgementText = "Uses ONNX Runtime, SimpleITK and Slicer's MRML. Not for clinical use."


def onnxRuntimeAvailable() -> bool:
    return packageAvailable("onnxruntime")


def requiredPackages(path=REQUIREMENTS) -> list:
    """The requirement lines of a requirements.txt (no comments, no pip options)."""
    return sharedRequiredPackages(path)


def offerOnnxRuntime(requirementsPath=REQUIREMENTS):
    """``(ready, message)``: ONNX Runtime importable, after installing ``requirementsPath`` if the user agrees
    (:func:`imagio.slicer_widget.offerPackages`: asks first, nothing in testing mode; ``pip_ensure`` on 5.12+,
    ``pip_install`` on 5.10 and 5.11; only ONNX Runtime, never slicer-core or imagio). Seeded segmentation
    works without it."""
    return offerPackages("onnxruntime", requirementsPath, "ONNX Runtime", "the model cannot run",
                         "Click Apply again to install it, or use the Seed method.",
                         "The model runs on ONNX Runtime", "IMAGIO Planning")


def _defaultCardPath() -> pathlib.Path:
    from imagio.model_card import SHIPPED_MODELS_DIR

    return SHIPPED_MODELS_DIR / "phantom_lesions" / "phantom_lesions.json"


@parameterNodeWrapper
class IMAGIOPlanningParameterNode:
    ctVolume: vtkMRMLScalarVolumeNode
    method: Method = Method.MODEL
    modelCardPath: pathlib.Path
    mirroring: bool = False
    largestComponent: bool = False
    force: bool = False
    acceptLarge: bool = False
    seedPoints: vtkMRMLMarkupsFiducialNode
    lesionKind: LesionKind = LesionKind.LUNG_NODULE
    radiusMm: Annotated[float, WithinRange(0.0, 100.0)] = 0.0


class IMAGIOPlanningWidget(DicomExportWidgetMixin, JobWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._cardNote = ""

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/IMAGIOPlanning.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = IMAGIOPlanningLogic()
        self.setupJobs(self.ui.progressBar, self.ui.resultLabel)  # model and seed both run in the background
        self.setupDicomExport(moduleButtons=(self.ui.applyButton,))  # the SR: each segment's volume
        self.observeSceneClose()
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Defaults first, then the GUI: a saved card path that no longer exists (a moved file, or the path
        of an earlier install) falls back to the shipped card, with a note saying so."""
        p = self.logic.getParameterNode()
        if not p.ctVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                p.ctVolume = first
        saved = p.modelCardPath
        if not saved or str(saved) in ("", "."):
            p.modelCardPath = _defaultCardPath()
        elif not pathlib.Path(saved).exists() and pathlib.Path(saved) != _defaultCardPath():
            self._cardNote = (f"The saved model card {saved} no longer exists (moved, or IMAGIO was reinstalled); "
                              "the shipped card is selected instead.")
            p.modelCardPath = _defaultCardPath()
        self.setParameterNode(p)

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None:
            return
        useModel = p.method is Method.MODEL
        self.ui.modelCollapsibleButton.collapsed = not useModel
        self.ui.seedCollapsibleButton.collapsed = useModel
        if self.jobRunning:
            return  # Apply is Cancel while a job runs
        if useModel:
            cardOk, text = self.logic.describeCard(p.modelCardPath)
            if self._cardNote and pathlib.Path(p.modelCardPath) != _defaultCardPath():
                self._cardNote = ""  # the user chose another card
            self.ui.modelInfoLabel.text = "\n".join(t for t in (self._cardNote, text) if t)
            ok = bool(p.ctVolume and cardOk)
            tip = "Run the model in a background process" if ok else "Select a CT and a usable model card"
        else:
            self.ui.seedPlaceWidget.setCurrentNode(p.seedPoints)
            ok = bool(p.ctVolume and p.seedPoints)
            tip = "Segment the lesion at the seed point" if ok else "Select a CT and a seed point list"
        self.ui.applyButton.enabled = ok
        self.ui.applyButton.toolTip = tip

    def onApplyButton(self) -> None:
        if self.jobRunning:  # the button is "Cancel"
            self.cancelJob()
            return
        p = self._parameterNode
        ct = p.ctVolume
        if p.method is Method.SEED:
            with slicer.util.tryWithErrorDisplay("Seeded segmentation failed.", waitCursor=True):
                if p.seedPoints.GetNumberOfControlPoints() < 1:
                    raise ValueError("Place a seed point inside the lesion first")
                point = [0.0, 0.0, 0.0]
                p.seedPoints.GetNthControlPointPositionWorld(0, point)
                radius, kind = (p.radiusMm if p.radiusMm > 0 else None), p.lesionKind.value
                job = self.logic.startSeeded(ct, point, kind, radius, acceptLarge=p.acceptLarge)
                self.startJob(job, lambda seeded: self._showResult(self.logic.loadSeededResult(ct, seeded, kind, radius)),
                              button=self.ui.applyButton, what="Seeded segmentation failed")
            return
        ready = False
        with slicer.util.tryWithErrorDisplay("Could not install ONNX Runtime."):
            ready, message = offerOnnxRuntime()
            self.ui.resultLabel.text = message
        if not ready:
            return
        with slicer.util.tryWithErrorDisplay("Could not start the model.", waitCursor=True):
            card = p.modelCardPath
            job = self.logic.startModelSegmentation(ct, card, p.mirroring, p.largestComponent, force=p.force)
            self.startJob(job, lambda _facts: self._showResult(self.logic.loadModelResult(ct, job, card)),
                          button=self.ui.applyButton, what="Model segmentation failed")

    def _showResult(self, result) -> None:
        self.ui.resultLabel.text = result.summary_text() + "\nCorrect it in the Segment Editor if needed."
        if result.warnings:
            slicer.util.warningDisplay("\n".join(result.warnings), windowTitle="IMAGIO Planning: warning")
        result.node.CreateClosedSurfaceRepresentation()


class IMAGIOPlanningLogic(DicomExportLogicMixin, ScriptedLoadableModuleLogic):
    """Thin adapter: Slicer's scene and parameter node over IMAGIOPlanningLib.logic.ModuleSession."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return IMAGIOPlanningParameterNode(super().getParameterNode())

    def _session(self):
        from IMAGIOPlanningLib.logic import ModuleSession

        return ModuleSession(slicer.mrmlScene, python_executable=self.pythonExecutable())

    def describeCard(self, cardPath) -> tuple:
        """``(usable, text)`` for the panel; never raises."""
        return self._session().describe_card(cardPath)

    def segmentFromSeed(self, ctNode, pointRas, kind: str, radiusMm=None, progressCallback=None, acceptLarge=False):
        logging.info("IMAGIOPlanning: seeded %s segmentation", kind)
        return self._session().segment_from_seed(ctNode, pointRas, kind, radiusMm, progressCallback, acceptLarge)

    def segmentWithModel(self, ctNode, cardPath, mirroring=False, largestComponent=False, progressCallback=None,
                         force=False):
        """Run the model in this process (blocking); the widget uses startModelSegmentation instead."""
        return self._session().segment_with_model(ctNode, cardPath, mirroring, largestComponent, progressCallback,
                                                  force)

    @staticmethod
    def pythonExecutable() -> str:
        """Slicer's own Python launcher (PythonSlicer), so the worker sees the same packages (imagio.jobs)."""
        return python_executable()

    def startModelSegmentation(self, ctNode, cardPath, mirroring=False, largestComponent=False, force=False):
        """Start the background job (refuses a bad card, or a CT outside its intended use unless ``force``)."""
        return self._session().start_model_segmentation(ctNode, cardPath, mirroring, largestComponent, force)

    def startSeeded(self, ctNode, pointRas, kind: str, radiusMm=None, acceptLarge=False):
        """Seeded segmentation as a background job (imagio.jobs.Job); then loadSeededResult."""
        return self._session().start_seeded(ctNode, pointRas, kind, radiusMm, acceptLarge)

    def loadSeededResult(self, ctNode, seeded, kind: str, radiusMm=None):
        return self._session().load_seeded_result(ctNode, seeded, kind, radiusMm)

    def loadModelResult(self, ctNode, job, cardPath):
        return self._session().load_model_result(ctNode, job, cardPath)


class IMAGIOPlanningTest(ScriptedLoadableModuleTest):
    """Runs the Logic on the phantom inside Slicer: seeded and background-model segmentation."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_seeded_lung_nodule()
        self.setUp()
        self.test_model_in_background()

    def _phantom(self):
        from imagio.mrml import volume_node_from_image
        from imagio.phantom import make_phantom

        if getattr(self, "_ph", None) is None:  # made once for both tests (neither changes it): ~5 s of CPU
            self._ph = make_phantom(0)
        return self._ph, volume_node_from_image(slicer.mrmlScene, self._ph.ct, "CT")

    def test_seeded_lung_nodule(self):
        self.delayDisplay("Seeded lung nodule on the phantom")
        ph, ct = self._phantom()
        result = IMAGIOPlanningLogic().segmentFromSeed(ct, ph.lung_nodule_center_ras, "lung-nodule")
        truth = ph.segments["lung_nodule"].volume_ml()
        got = result.segments[0]["volume_ml"]
        self.assertGreater(got, 0.5 * truth)
        self.assertLess(got, 1.5 * truth)
        self.delayDisplay("Seeded test passed")

    def test_model_in_background(self):
        import time

        if not onnxRuntimeAvailable():  # Slicer does not bundle it; a test never installs packages
            self.delayDisplay("ONNX Runtime is not installed: the background model test is not run")
            return
        self.delayDisplay("Shipped model in a background process")
        ph, ct = self._phantom()
        logic = IMAGIOPlanningLogic()
        job = logic.startModelSegmentation(ct, _defaultCardPath())
        try:
            deadline = time.monotonic() + 300
            status = job.poll()
            while status.state == "running" and time.monotonic() < deadline:
                slicer.app.processEvents()
                time.sleep(0.2)
                status = job.poll()
            self.assertEqual(status.state, "done", status.message)
            result = logic.loadModelResult(ct, job, _defaultCardPath())
            names = {s["name"] for s in result.segments}
            self.assertIn("Liver tumor", names)
        finally:
            job.cleanup()
        self.delayDisplay("Background model test passed")
