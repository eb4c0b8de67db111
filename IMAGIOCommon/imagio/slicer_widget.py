"""The parameter-node widget lifecycle of Slicer's scripted-module template, written once for every IMAGIO module.

Only for the Slicer application (it uses ``slicer.mrmlScene`` and the widget's
``self.parent``); the Logic and everything outside Slicer never import it.

A module widget derives from ``ParameterNodeWidgetMixin`` first::

    class IMAGIOXWidget(ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):

sets ``self.logic`` (whose ``getParameterNode()`` returns the typed parameter
node) and ``self.ui``, calls ``self.observeSceneClose()`` and
``self.initializeParameterNode()`` at the end of ``setup()``, and overrides
``onParameterNodeModified`` to update its GUI state.
"""

import slicer
import vtk


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
