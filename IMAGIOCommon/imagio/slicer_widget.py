"""The parameter-node widget lifecycle of Slicer's scripted-module template, written once for every IMAGIO module.

Only for the Slicer application (it uses ``slicer.mrmlScene`` and the widget's
``self.parent``); the Logic and everything outside Slicer never import it.

A module widget derives from ``ParameterNodeWidgetMixin`` first::

    class IMAGIOXWidget(ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):

sets ``self.logic`` (whose ``getParameterNode()`` returns the typed parameter
node) and ``self.ui``, calls ``self.observeSceneClose()`` and
``self.initializeParameterNode()`` at the end of ``setup()``, and overrides
``onParameterNodeModified`` to update its GUI state.

A widget whose steps can take more than a second derives from ``JobWidgetMixin`` (which includes the
parameter-node lifecycle) and runs them as background jobs (:mod:`imagio.jobs`)::

    class IMAGIOXWidget(JobWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
        def onApplyButton(self):
            if self.jobRunning:
                self.cancelJob()
                return
            self.startJob(self.logic.startX(...), self.onXDone, button=self.ui.applyButton, what="X failed")

While the job runs its button reads "Cancel", the progress bar follows the job, and the status label
says what runs; on success ``onDone(result)`` adds the outputs to the scene; on failure the job's
one-line error is shown (status label and error display) and nothing is added; cancel ends the job's
whole process group and adds nothing. Polling is a QTimer: no ``processEvents()`` anywhere.

A widget with segment selectors (``qMRMLSegmentSelectorWidget``: segments chosen by node and segment ID,
never by name) derives from ``SegmentSelectorsMixin`` too, lists them in ``segmentSelectors()``, calls
``connectSegmentSelectors()`` in ``setup()`` and ``updateSegmentSelectors()`` in ``onParameterNodeModified``::

    class IMAGIOXWidget(SegmentSelectorsMixin, JobWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
        def segmentSelectors(self):
            return (SegmentSelector(self.ui.tumorSegmentSelector, "tumorSegmentation", "tumorSegmentID"),)

Every panel has a "DICOM export" section (the same widget names in each .ui: ``exportCTSelector``,
``exportSegmentationsSelector``, ``exportDirectoryButton``, ``exportResultsLabel``, ``exportDicomButton``,
``exportStatusLabel``): the widget derives from ``DicomExportWidgetMixin`` first, its Logic from
:class:`imagio.dicom_export.DicomExportLogicMixin`, and ``setup()`` calls
``setupDicomExport(moduleButtons=(...))`` with the panel's own job buttons (disabled while an export runs).
"""

import importlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import NamedTuple

import qt
import slicer
import vtk

#: what the DICOM export needs inside Slicer and Slicer does not bundle (installed only with the user's consent)
DICOM_REQUIREMENTS = Path(__file__).resolve().parents[1] / "Resources" / "dicom-requirements.txt"


def packageAvailable(importName: str) -> bool:
    importlib.invalidate_caches()
    return importlib.util.find_spec(importName) is not None


def requiredPackages(path) -> list:
    """The requirement lines of a requirements.txt (no comments, no pip options)."""
    lines = (line.split("#")[0].strip() for line in Path(path).read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def offerPackages(importName: str, requirementsPath, what: str, consequence: str, retry: str, purpose: str,
                  requester: str) -> tuple:
    """``(ready, message)``: ``importName`` importable, after installing ``requirementsPath`` if the user agrees.

    Asks first (nothing is installed without a yes, and nothing in testing mode); installs with
    ``slicer.packaging.pip_ensure`` on Slicer 5.12 and later, ``slicer.util.pip_install`` on 5.10 and 5.11;
    only the packages of ``requirementsPath``, never slicer-core or imagio. ``what`` names the package for the
    user, ``consequence`` says what cannot run without it, ``retry`` how to get it later, ``purpose`` what it is for.
    """
    if packageAvailable(importName):
        return True, ""
    packages = requiredPackages(requirementsPath)
    if slicer.app.testingEnabled():
        return False, f"{what} is not installed, and nothing is installed in testing mode; {consequence}."
    question = (f"{purpose}, which this Slicer does not include yet.\n\n"
                f"Install {', '.join(packages)} from the Python Package Index (pypi.org) into Slicer's Python now? "
                "Nothing else is installed.")
    if not slicer.util.confirmOkCancelDisplay(question, windowTitle=f"{requester}: install {what}"):
        return False, f"{what} is not installed, so {consequence}; nothing was installed. {retry}"
    slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
    try:
        if (slicer.app.majorVersion, slicer.app.minorVersion) >= (5, 12):
            packaging = importlib.import_module("slicer.packaging")  # 5.12+
            packaging.pip_ensure(packages, prompt_install=False, requester=requester)
        else:
            slicer.util.pip_install(["-r", str(requirementsPath)])
    finally:
        slicer.app.restoreOverrideCursor()
    if not packageAvailable(importName):
        return False, f"{what} was installed but cannot be imported; see the Python console, or restart Slicer."
    return True, f"{what} installed."


class ParameterNodeWidgetMixin:
    _parameterNode = None
    _parameterNodeGuiTag = None

    def observeSceneClose(self) -> None:
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        """Update the GUI state (enabled buttons, info labels) from the parameter node."""


class JobWidgetMixin(ParameterNodeWidgetMixin):
    """Apply -> Cancel, progress and the error display for background jobs (one at a time per widget)."""

    JOB_POLL_MS = 200
    _job = None
    _jobTimer = None
    _jobOnDone = None
    _jobButton = None
    _jobButtonText = ""
    _jobButtonTip = ""
    _jobWhat = ""

    def setupJobs(self, progressBar, statusLabel) -> None:
        """Call in ``setup()``: the progress bar and label that every job of this widget reports to."""
        self._jobProgressBar = progressBar
        self._jobStatusLabel = statusLabel
        self._jobTimer = qt.QTimer()
        self._jobTimer.setInterval(self.JOB_POLL_MS)
        self._jobTimer.connect("timeout()", self.pollJob)

    @property
    def jobRunning(self) -> bool:
        return self._job is not None

    def startJob(self, job, onDone, button, what: str, runningText: str = "Running in a background process; "
                 "Slicer stays usable.") -> None:
        """Watch ``job`` (an :class:`imagio.jobs.Job`, already started); ``onDone(result)`` once it is done."""
        if self._job is not None:
            job.cleanup()
            raise RuntimeError("A background job is already running in this module")
        self._job, self._jobOnDone, self._jobWhat = job, onDone, what
        self._jobButton = button
        self._jobButtonText, self._jobButtonTip = button.text, button.toolTip
        button.text = "Cancel"
        button.toolTip = "Stop the background process (nothing is added to the scene)"
        button.enabled = True
        self._showJobProgress(0.0, "Starting")
        self._jobStatusLabel.text = runningText
        self._jobTimer.start()
        self.onJobStateChanged()

    def pollJob(self) -> None:
        """The timer's slot: follow the job's progress; on its end, add its result or show its error."""
        job = self._job
        if job is None:
            self._jobTimer.stop()
            return
        status = job.poll()
        self._showJobProgress(status.fraction, status.message)
        if status.state == "running":
            return
        onDone, what = self._jobOnDone, self._jobWhat
        self._endJob()
        try:
            if status.state == "done":
                with slicer.util.tryWithErrorDisplay(f"{what}: the result could not be added to the scene."):
                    onDone(job.result())
            elif status.state == "failed":
                self._jobStatusLabel.text = f"{what}: {status.message}"
                slicer.util.errorDisplay(f"{what}: {status.message}", windowTitle=getattr(self, "moduleName", None))
        finally:
            job.cleanup()
            self.onJobStateChanged()

    def cancelJob(self) -> None:
        """End the running job (its whole process group); nothing is added to the scene."""
        job = self._job
        if job is None:
            return
        self._endJob()
        job.cleanup()
        self._showJobProgress(0.0, "Cancelled")
        self._jobStatusLabel.text = "Cancelled: nothing was added to the scene."
        self.onJobStateChanged()

    def onJobStateChanged(self) -> None:
        """A job started or ended: by default the GUI state is recomputed from the parameter node."""
        if self._parameterNode is not None:
            self.onParameterNodeModified()

    def _endJob(self) -> None:
        self._jobTimer.stop()
        self._job = None
        if self._jobButton is not None:
            self._jobButton.text = self._jobButtonText
            self._jobButton.toolTip = self._jobButtonTip
        self._jobButton = None

    def _showJobProgress(self, fraction: float, message: str) -> None:
        self._jobProgressBar.value = int(round(100 * fraction))
        self._jobProgressBar.setFormat(f"{message} (%p%)")

    def cleanup(self) -> None:
        self.cancelJob()
        super().cleanup()

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelJob()  # its result belongs to the scene being closed
        super().onSceneStartClose(caller, event)


class SegmentSelector(NamedTuple):
    """A ``qMRMLSegmentSelectorWidget`` and the parameter-node fields it shows and sets.

    ``nodeField``: the segmentation node field. ``segmentField``: the chosen segment ID (``str``), or the
    chosen IDs (``list[str]``) when the selector has ``multiSelection``. ``ownsNode``: the selector's own
    node selector sets the node field (False: another widget, bound through ``SlicerParameterName``, sets
    it, and the selector only follows it).
    """

    selector: object
    nodeField: str
    segmentField: str
    ownsNode: bool = True

    @property
    def multi(self) -> bool:
        return bool(self.selector.multiSelection)

    def chosen(self):
        """The selector's segment choice, as the parameter node holds it."""
        if self.multi:
            return list(self.selector.selectedSegmentIDs())
        return self.selector.currentSegmentID() or ""

    def stored(self, p):
        value = getattr(p, self.segmentField)
        return list(value) if self.multi else (value or "")


class SegmentSelectorsMixin:
    """Segment selectors in step with the parameter node's segmentation and segment-ID fields, both ways.

    Slicer 5.10's parameter-node wrapper has no GUI connector for ``qMRMLSegmentSelectorWidget``, so this is
    the one place that syncs them: the parameter node is shown in the selectors (a selector that drops a
    segment no longer in its node, or picks one, writes that back) and a user's choice is written to the
    parameter node, never re-entering itself.
    """

    _updatingSelectors = False

    def segmentSelectors(self) -> tuple:
        """The widget's :class:`SegmentSelector` bindings."""
        return ()

    def connectSegmentSelectors(self) -> None:
        """Call in ``setup()``: a user's choice in any selector goes to the parameter node."""
        for s in self.segmentSelectors():
            if s.ownsNode:
                s.selector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentSelectorsChanged)
            if s.multi:
                s.selector.connect("segmentSelectionChanged(QStringList)", self.onSegmentSelectorsChanged)
            else:
                s.selector.connect("currentSegmentChanged(QString)", self.onSegmentSelectorsChanged)

    def updateSegmentSelectors(self) -> None:
        """The segment selectors show the parameter node's segmentations and chosen segment IDs."""
        p = self._parameterNode
        if p is None or self._updatingSelectors:
            return
        self._updatingSelectors = True
        try:
            for s in self.segmentSelectors():
                s.selector.setCurrentNode(getattr(p, s.nodeField))
                if s.multi:
                    s.selector.setSelectedSegmentIDs(s.stored(p))
                else:
                    s.selector.setCurrentSegmentID(s.stored(p))
        finally:
            self._updatingSelectors = False
        self.onSegmentSelectorsChanged()  # a selector that dropped or picked a segment writes it back

    def onSegmentSelectorsChanged(self, *args) -> None:
        """The user's choice in a segment selector -> the parameter node's segmentation and segment IDs."""
        p = self._parameterNode
        if p is None or self._updatingSelectors:
            return
        changes = {}
        for s in self.segmentSelectors():
            if s.ownsNode and getattr(p, s.nodeField) is not s.selector.currentNode():
                changes[s.nodeField] = s.selector.currentNode()
            if s.chosen() != s.stored(p):
                changes[s.segmentField] = s.chosen()
        if changes:
            with slicer.util.NodeModify(p.parameterNode):
                for field, value in changes.items():
                    setattr(p, field, value)


class DicomExportWidgetMixin:
    """The panel's "DICOM export" section: the chosen segmentations on the chosen CT as DICOM SEG + TID 1500 SR.

    The CT must come from Slicer's DICOM database (the SEG refers to its slices); the SR holds each
    segment's volume and the module's last result (``self.logic.exportResults``: margin, plan or route,
    the same numbers ``imagio export-dicom`` takes from margin.json, plan.json or route.json). Each export
    goes into a new folder under the chosen one (nothing is overwritten) and runs as a background job.
    """

    EXPORT_DIRECTORY_SETTING = "IMAGIO/DicomExportDirectory"
    _exportModuleButtons = ()

    def setupDicomExport(self, moduleButtons=()) -> None:
        """Call in ``setup()`` after ``setupJobs``: ``moduleButtons`` are the panel's other job buttons."""
        self._exportModuleButtons = tuple(moduleButtons)
        ui = self.ui
        saved = qt.QSettings().value(self.EXPORT_DIRECTORY_SETTING, "")
        ui.exportDirectoryButton.directory = saved if saved and os.path.isdir(saved) else str(Path.home())
        ui.exportDirectoryButton.connect("directoryChanged(QString)", self.onExportDirectoryChanged)
        ui.exportCTSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateDicomExportState)
        ui.exportSegmentationsSelector.connect("checkedNodesChanged()", self.updateDicomExportState)
        ui.exportDicomButton.connect("clicked(bool)", self.onExportDicomButton)
        self.updateDicomExportState()

    def onSceneStartClose(self, caller, event) -> None:
        if self.logic is not None:
            self.logic.setExportResults(None)  # the last result's numbers belong to the scene being closed
        super().onSceneStartClose(caller, event)

    def onExportDirectoryChanged(self, directory) -> None:
        qt.QSettings().setValue(self.EXPORT_DIRECTORY_SETTING, str(directory))
        self.updateDicomExportState()

    def updateDicomExportState(self, *args) -> None:
        """The export button: enabled when a CT, a checked segmentation and a folder are chosen and no job runs
        (while the export runs it is its Cancel); the line on what the SR will hold."""
        ui = self.ui
        if self.logic is not None:
            ui.exportResultsLabel.text = self.logic.describeExportResults()
        if self.jobRunning:
            exporting = self._jobButton is ui.exportDicomButton
            ui.exportDicomButton.enabled = exporting
            if not exporting:
                ui.exportDicomButton.toolTip = "Another step of this module is running"
            return
        missing = [what for what, ok in (("a CT loaded from DICOM", ui.exportCTSelector.currentNode() is not None),
                                         ("at least one segmentation", bool(ui.exportSegmentationsSelector.checkedNodes())),
                                         ("an output folder", bool(str(ui.exportDirectoryButton.directory).strip())))
                   if not ok]
        ui.exportDicomButton.enabled = not missing
        ui.exportDicomButton.toolTip = ("Write a DICOM SEG and a TID 1500 SR into a new folder under the chosen one"
                                        if not missing else "Choose " + ", ".join(missing))

    def onJobStateChanged(self) -> None:
        super().onJobStateChanged()
        if self.jobRunning:  # one job at a time: only the running job's button (its Cancel) stays active
            for b in (*self._exportModuleButtons, self.ui.exportDicomButton):
                if b is not self._jobButton:
                    b.enabled = False
        self.updateDicomExportState()

    def onExportDicomButton(self) -> None:
        if self.jobRunning:
            if self._jobButton is self.ui.exportDicomButton:  # the button is "Cancel"
                self.cancelJob()
            return
        from imagio.dicom_export import ct_files_for_volume_node

        ui = self.ui
        ready, message = offerPackages(
            "highdicom", DICOM_REQUIREMENTS, "highdicom", "the DICOM SEG and SR cannot be written",
            "Click Export again to install it.", "The DICOM export writes its SEG and SR with highdicom",
            "IMAGIO DICOM export")
        ui.exportStatusLabel.text = message
        if not ready:
            return
        with slicer.util.tryWithErrorDisplay("DICOM export failed.", waitCursor=True):
            ct = ui.exportCTSelector.currentNode()
            files = ct_files_for_volume_node(ct, getattr(slicer, "dicomDatabase", None))
            job, folder = self.logic.startDicomExport(list(ui.exportSegmentationsSelector.checkedNodes()), ct, files,
                                                      ui.exportDirectoryButton.directory)
            self.startJob(job, self.onDicomExportDone, button=ui.exportDicomButton, what="DICOM export failed",
                          runningText=f"Writing the DICOM SEG and SR into {folder} in a background process; "
                                      "Slicer stays usable.")

    def onDicomExportDone(self, export) -> None:
        from imagio.dicom_export import export_summary

        text = export_summary(export)
        self.ui.exportStatusLabel.text = text
        self._jobStatusLabel.text = text
        logging.info(text)
