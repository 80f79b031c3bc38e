"""The module panels' common frame: the .ui, the parameter node and the scene events, written once.

``LesionSegModuleWidget`` is what every LesionSeg module widget does the same way: load
``Resources/UI/<module>.ui``, bind it to the logic's parameter node, follow scene close, and set each
action button's enabled state and tooltip from the logic. ``SegmentationModuleWidget`` adds the panels
SpleenSeg and ProstateMetSeg share (segment, compare with reference, export). A module widget derives
from one of them and fills in the hooks; Slicer finds it by its ``<Module>Widget`` name as usual, and
``moduleName`` still comes from that name.
"""

from __future__ import annotations

from typing import Any

import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from LesionSegLib.segmenting import default_input_volume
from LesionSegLib.widgets import ComparisonPanel, ExportPanel, SegmentPanel, appendLog


class LesionSegModuleWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """A module panel kept in step with its logic's parameter node.

    Hooks for a module: ``createLogic`` (required), ``setupPanels`` (connect the module's own widgets),
    ``refreshPanels`` (after a parameter node is bound), ``buttonStates`` (button, (enabled, tooltip))
    pairs, and ``stopBackgroundWork`` (closing the module must not leave a child process running).
    ``volumeField`` names the parameter that starts as the scene's first CT volume (not a labelmap).
    """

    volumeField = "inputVolume"

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    # --- hooks -------------------------------------------------------------------------------------------

    def createLogic(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must say which logic it uses")

    def setupPanels(self) -> None:
        """Connect the module's widgets; runs once ``self.ui`` and ``self.logic`` exist."""

    def refreshPanels(self) -> None:
        """Update what is shown from the newly bound parameter node."""

    def buttonStates(self) -> list[tuple[Any, tuple[bool, str]]]:
        """Each action button with (enabled, tooltip saying why or why not)."""
        return []

    def stopBackgroundWork(self) -> None:
        """Stop timers and cancel child processes."""

    # --- the frame ---------------------------------------------------------------------------------------

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath(f"UI/{self.moduleName}.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # The .ui connects the root's mrmlSceneChanged(vtkMRMLScene*) to every node selector.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = self.createLogic()
        self.setupPanels()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        self.stopBackgroundWork()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self._releaseParameterNode()

    def onReload(self) -> None:
        """Developer mode's Reload: read LesionSegLib and the engine from source again, then the module file."""
        from LesionSegLib.reloading import forget_packages

        forget_packages()
        ScriptedLoadableModuleWidget.onReload(self)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not getattr(self._parameterNode, self.volumeField):
            # Not GetFirstNodeByClass("vtkMRMLScalarVolumeNode"): it returns labelmaps too, which the
            # selector cannot show.
            volumeNode = default_input_volume(slicer.mrmlScene)
            if volumeNode:
                setattr(self._parameterNode, self.volumeField, volumeNode)
        self.refreshPanels()

    def _releaseParameterNode(self) -> None:
        """Unbind the GUI from the parameter node and stop observing it (on exit, and before binding another)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            # exit() may have released it already; removing an observer twice only logs a warning.
            if self.hasObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply):
                self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def setParameterNode(self, inputParameterNode: Any | None) -> None:
        self._releaseParameterNode()
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets carrying the "SlicerParameterName" property in the .ui are bound to the fields
            # of the same name.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def log(self, message: str) -> None:
        appendLog(self.ui.logTextEdit, message)

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self._parameterNode is None:
            return
        for button, (enabled, reason) in self.buttonStates():
            button.enabled = enabled
            button.toolTip = reason


class SegmentationModuleWidget(LesionSegModuleWidget):
    """SpleenSeg's and ProstateMetSeg's panel: input volume, Segment, Compare with reference, Export."""

    def setupPanels(self) -> None:
        self.comparisonPanel = ComparisonPanel(self.ui, self.logic, lambda: self._parameterNode)
        self.exportPanel = ExportPanel(self.ui, self.logic, lambda: self._parameterNode, self.log)
        self.segmentPanel = SegmentPanel(
            self.ui, self.logic, lambda: self._parameterNode, self.log, onResult=self.onSegmentationAdded
        )
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputVolumeChanged)

    def refreshPanels(self) -> None:
        self.onInputVolumeChanged(self._parameterNode.inputVolume)
        self.comparisonPanel.refreshMapping()
        self.exportPanel.updateStatus()
        self.segmentPanel.refreshModels()

    def buttonStates(self) -> list[tuple[Any, tuple[bool, str]]]:
        return [
            (self.ui.segmentButton, self.segmentPanel.readiness()),
            (self.ui.compareButton, self.logic.compareReadiness(self._parameterNode)),
            (self.ui.exportButton, self.logic.exportReadiness(self._parameterNode)),
        ]

    def stopBackgroundWork(self) -> None:
        # Both children end with the module: a segmentation, and a model download in progress.
        if self.segmentPanel.run is not None:
            self.segmentPanel.run.cancel()
        if self.segmentPanel.download is not None:
            self.segmentPanel.download.cancel()
        self.segmentPanel.timer.stop()
        self.logic.shutdownWorker()  # the session's warm worker: cleanup runs on reload and on Slicer's exit

    def onSegmentationAdded(self, segmentationNode) -> None:
        """Called with each new result node once it is in the scene."""

    def onInputVolumeChanged(self, volumeNode) -> None:
        if volumeNode is None:
            self.ui.inputInfoLabel.text = ""
            return
        try:
            self.ui.inputInfoLabel.text = self.logic.describeVolume(volumeNode)
        except ValueError as error:
            self.ui.inputInfoLabel.text = str(error)
