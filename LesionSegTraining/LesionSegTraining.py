import logging
import os
import sys

import numpy as np
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

if sys.version_info < (3, 10):  # noqa: UP036 (this file runs in whatever Python the user's Slicer embeds)
    # Slicer 5.8 and older embed Python 3.9; the engine needs 3.10 or newer (Slicer 5.10 has 3.12).
    raise ImportError(
        f"LesionSeg needs Slicer 5.10 or newer (Python >= 3.10); this Slicer runs Python {sys.version.split()[0]}"
    )

try:
    import lesionseg.mrml
except ModuleNotFoundError as error:
    if error.name != "lesionseg":
        raise
    # The extension installs the engine beside this file (qt-scripted-modules/lesionseg). A developer
    # who adds this folder under Application Settings > Modules runs the source tree instead, where
    # the engine is in the repository root: this file's grand-parent folder.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import lesionseg.mrml
from lesionseg.image import Image
from lesionseg.labels import LabelInfo

#
# LesionSegTraining
#


class LesionSegTraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("LesionSeg Training")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["LesionSeg developers"]
        self.parent.helpText = _("""
Builds a training dataset from curated cases (a CT volume and its segmentation) and trains a
segmentation model on it in a background process that can be cancelled and resumed.
This version selects the inputs only: saving cases and training arrive in a later version of LesionSeg.
See the <a href="https://github.com/lesionseg/SlicerLesionSeg">LesionSeg documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Part of the LesionSeg extension. Its engine builds on 3D Slicer, MONAI, PyTorch and SimpleITK.
""")


#
# LesionSegTrainingParameterNode
#


@parameterNodeWrapper
class LesionSegTrainingParameterNode:
    """
    The choices of the LesionSegTraining module, kept in the scene.

    datasetFolder - The folder that holds the training cases ("" until one is chosen).
    caseVolume - The CT volume of the case to add.
    caseSegmentation - The curated segmentation of that volume.
    configPreset - Name of the training configuration preset; the list is filled from the engine.
    """

    # A str, not a pathlib.Path: the Path serializer turns "nothing chosen" into ".", which would
    # read as "the folder Slicer was started from". The widget binds this field by hand.
    datasetFolder: str = ""
    caseVolume: vtkMRMLScalarVolumeNode
    caseSegmentation: vtkMRMLSegmentationNode
    configPreset: str = ""


#
# LesionSegTrainingWidget
#


class LesionSegTrainingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LesionSegTraining.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # The .ui connects the root's mrmlSceneChanged(vtkMRMLScene*) to every node selector.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = LesionSegTrainingLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.datasetFolderPathLineEdit.connect("currentPathChanged(QString)", self.onDatasetFolderChanged)
        self.ui.caseVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onCaseChanged)
        self.ui.caseSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onCaseChanged)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.caseVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.caseVolume = firstVolumeNode
        self.onCaseChanged()

    def setParameterNode(self, inputParameterNode: LesionSegTrainingParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            # exit() may have removed the observer already; removing it twice only logs a warning.
            if self.hasObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply):
                self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets carrying the "SlicerParameterName" property in the .ui are bound to the fields
            # of the same name.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def onDatasetFolderChanged(self, path: str) -> None:
        if self._parameterNode and self._parameterNode.datasetFolder != path:
            self._parameterNode.datasetFolder = path

    def onCaseChanged(self, node=None) -> None:
        # Read the nodes from the selectors: this runs before the parameter node has been updated.
        volumeNode = self.ui.caseVolumeSelector.currentNode()
        segmentationNode = self.ui.caseSegmentationSelector.currentNode()
        if volumeNode is None:
            self.ui.caseInfoLabel.text = ""
            return
        try:
            self.ui.caseInfoLabel.text = self.logic.describeCase(volumeNode, segmentationNode)
        except ValueError as error:
            self.ui.caseInfoLabel.text = str(error)

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self._parameterNode is None:
            return
        # datasetFolder is bound by hand (see the parameter node); only push a real change to the
        # line edit, so typing in it is not interrupted.
        if self.ui.datasetFolderPathLineEdit.currentPath != self._parameterNode.datasetFolder:
            self.ui.datasetFolderPathLineEdit.currentPath = self._parameterNode.datasetFolder
        for button, (enabled, reason) in (
            (self.ui.saveCaseButton, self.logic.saveCaseReadiness(self._parameterNode)),
            (self.ui.trainButton, self.logic.trainReadiness(self._parameterNode)),
            (self.ui.cancelButton, self.logic.cancelReadiness()),
            (self.ui.resumeButton, self.logic.resumeReadiness(self._parameterNode)),
        ):
            button.enabled = enabled
            button.toolTip = reason


#
# LesionSegTrainingLogic
#


class LesionSegTrainingLogic(ScriptedLoadableModuleLogic):
    """Everything LesionSegTraining computes, callable without the widget: methods take the nodes they work on."""

    # Saving cases and training need engine parts that a later version of LesionSeg adds. Until then
    # their buttons stay disabled and say so, whatever is selected.
    savingCasesAvailable = False
    trainingAvailable = False

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return LesionSegTrainingParameterNode(super().getParameterNode())

    def caseLabels(self, segmentationNode: vtkMRMLSegmentationNode) -> list[LabelInfo]:
        """The case's segments as engine labels (1..N in segment order)."""
        return [info for _segmentId, info in lesionseg.mrml.segment_labels(segmentationNode)]

    def describeCase(
        self, volumeNode: vtkMRMLScalarVolumeNode, segmentationNode: vtkMRMLSegmentationNode | None
    ) -> str:
        """One line on the case: the volume's grid and the segment names; raises ValueError for unusable input."""
        image: Image = lesionseg.mrml.image_from_volume_node(volumeNode)
        text = _("{size} voxels, {spacing} mm").format(
            size="×".join(str(n) for n in image.size),
            spacing="×".join(f"{s:.3g}" for s in image.spacing),
        )
        if segmentationNode is not None:
            names = [info.name for info in self.caseLabels(segmentationNode)]
            text += "; " + (_("segments: {names}").format(names=", ".join(names)) if names else _("no segments"))
        return text

    def setCase(
        self,
        parameterNode: LesionSegTrainingParameterNode,
        volumeNode: vtkMRMLScalarVolumeNode,
        segmentationNode: vtkMRMLSegmentationNode,
    ) -> str:
        """Choose the case to add, after checking the engine can read it; returns its description."""
        description = self.describeCase(volumeNode, segmentationNode)
        parameterNode.caseVolume = volumeNode
        parameterNode.caseSegmentation = segmentationNode
        logging.info(f"LesionSegTraining case: {volumeNode.GetName()} ({description})")
        return description

    def saveCaseReadiness(self, parameterNode: LesionSegTrainingParameterNode | None) -> tuple[bool, str]:
        """Whether Save training case can run now, and the tooltip that says why or why not."""
        if not self.savingCasesAvailable:
            return False, _("Saving training cases arrives in a later version of LesionSeg.")
        if parameterNode is None or not parameterNode.datasetFolder:
            return False, _("Choose a dataset folder.")
        if not parameterNode.caseVolume or not parameterNode.caseSegmentation:
            return False, _("Select the case volume and its segmentation.")
        return True, _("Add this case to the dataset.")

    def trainReadiness(self, parameterNode: LesionSegTrainingParameterNode | None) -> tuple[bool, str]:
        """Whether Train can run now, and the tooltip that says why or why not."""
        if not self.trainingAvailable:
            return False, _("Training arrives in a later version of LesionSeg.")
        if parameterNode is None or not parameterNode.datasetFolder:
            return False, _("Choose a dataset folder.")
        return True, _("Train a model on the dataset.")

    def cancelReadiness(self) -> tuple[bool, str]:
        """Whether Cancel can act now: only while a training run is going, which this version cannot start."""
        if not self.trainingAvailable:
            return False, _("Cancelling a training run arrives in a later version of LesionSeg.")
        return False, _("No training run is going.")

    def resumeReadiness(self, parameterNode: LesionSegTrainingParameterNode | None) -> tuple[bool, str]:
        """Whether Resume can run now, and the tooltip that says why or why not."""
        if not self.trainingAvailable:
            return False, _("Resuming a training run arrives in a later version of LesionSeg.")
        if parameterNode is None or not parameterNode.datasetFolder:
            return False, _("Choose a dataset folder.")
        return True, _("Resume the last training run on this dataset.")


#
# LesionSegTrainingTest
#


class LesionSegTrainingTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_choosing_a_case_fills_the_inputs_and_training_says_it_is_not_available_yet()
        self.setUp()
        self.test_case_segmentation_round_trips_through_the_bridge()

    def _makeCase(self, name: str):
        k, j, i = np.indices((6, 10, 12))
        ct = Image((i * 7 + j * 131 + k * 1009).astype(np.int16) - 1024, (0.9, 0.9, 3.0), (-20.0, 35.0, -5.0))
        labels = np.zeros(ct.array.shape, np.uint8)
        labels[1:4, 2:6, 2:7] = 1
        labels[4:6, 6:9, 8:11] = 2
        volume = lesionseg.mrml.volume_node_from_image(slicer.mrmlScene, ct, name + "CT")
        segmentation = lesionseg.mrml.segmentation_node_from_labelmap(
            slicer.mrmlScene, ct.with_array(labels), name + "Segmentation", {1: "liver", 2: "lesion"}, volume
        )
        return ct, labels, volume, segmentation

    def test_choosing_a_case_fills_the_inputs_and_training_says_it_is_not_available_yet(self):
        self.delayDisplay("Choosing a training case")
        _ct, _labels, volume, segmentation = self._makeCase("LesionSegTrainingTest")

        logic = LesionSegTrainingLogic()
        parameterNode = logic.getParameterNode()
        description = logic.setCase(parameterNode, volume, segmentation)
        self.assertEqual(parameterNode.caseVolume, volume)
        self.assertEqual(parameterNode.caseSegmentation, segmentation)
        self.assertIn("12×10×6", description)
        self.assertIn("liver, lesion", description)

        widget = slicer.util.getModuleWidget("LesionSegTraining")
        widget.enter()
        try:
            self.assertEqual(widget.ui.caseVolumeSelector.currentNode(), volume)
            self.assertEqual(widget.ui.caseSegmentationSelector.currentNode(), segmentation)
            self.assertIn("liver, lesion", widget.ui.caseInfoLabel.text)
            for button in (
                widget.ui.saveCaseButton,
                widget.ui.trainButton,
                widget.ui.cancelButton,
                widget.ui.resumeButton,
            ):
                self.assertFalse(button.enabled, button.text)
                self.assertIn("later version", button.toolTip)
            self.assertFalse(widget.ui.configPresetComboBox.enabled)

            # The dataset folder is bound by hand: a path typed in the widget reaches the parameter node.
            folder = slicer.util.tempDirectory("__LesionSegTrainingTest__")
            try:
                widget.ui.datasetFolderPathLineEdit.currentPath = folder
                self.assertEqual(parameterNode.datasetFolder, folder)
                self.assertFalse(widget.ui.saveCaseButton.enabled)
            finally:
                os.rmdir(folder)
        finally:
            widget.exit()
        self.delayDisplay("Test passed")

    def test_case_segmentation_round_trips_through_the_bridge(self):
        self.delayDisplay("Round trip of a case segmentation through the MRML bridge")
        ct, labels, volume, segmentation = self._makeCase("LesionSegTrainingRoundTrip")
        self.assertEqual([info.name for info in LesionSegTrainingLogic().caseLabels(segmentation)], ["liver", "lesion"])

        back, table = lesionseg.mrml.labelmap_from_segmentation_node(segmentation, volume, {"liver": 1, "lesion": 2})
        np.testing.assert_array_equal(back.array, labels)
        self.assertEqual([(info.value, info.name) for info in table], [(1, "liver"), (2, "lesion")])
        np.testing.assert_allclose(back.origin, ct.origin, atol=1e-6)
        np.testing.assert_allclose(back.spacing, ct.spacing, atol=1e-6)
        self.delayDisplay("Test passed")
