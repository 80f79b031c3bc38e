import logging
import os
import sys
from typing import Annotated

import numpy as np
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
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
from lesionseg.orientation import orientation_code

DEVICES = ("auto", "cpu", "cuda")

# Lesions under 100 mm³ are the usual floor when metastasis segmentations are scored (e.g. nnU-Net
# brain-metastasis studies); smaller predictions are mostly noise at CT resolution.
DEFAULT_MIN_LESION_VOLUME_MM3 = 100


#
# ProstateMetSeg
#


class ProstateMetSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Prostate Metastasis Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["LesionSeg developers"]
        self.parent.helpText = _("""
Segments metastases of prostate cancer in a CT volume with an AI model, drops lesions smaller than a
minimum volume, compares the result with a reference segmentation and exports it as DICOM RTSTRUCT.
This version selects the inputs only: segmenting, comparing and exporting arrive in a later version of LesionSeg.
See the <a href="https://github.com/lesionseg/SlicerLesionSeg">LesionSeg documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Part of the LesionSeg extension. Its engine builds on 3D Slicer, MONAI, PyTorch and SimpleITK.
""")


#
# ProstateMetSegParameterNode
#


@parameterNodeWrapper
class ProstateMetSegParameterNode:
    """
    The choices of the ProstateMetSeg module, kept in the scene.

    inputVolume - The CT volume to segment.
    outputSegmentation - The segmentation that holds the latest result (each run makes a new one).
    referenceSegmentation - A trusted segmentation of the same volume to compare the result with.
    modelId - Id of the model to run; the model list is filled from the engine's model registry.
    device - Where the network runs: "auto" picks CUDA when PyTorch sees a GPU.
    minLesionVolumeMm3 - Predicted lesions smaller than this are dropped.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    referenceSegmentation: vtkMRMLSegmentationNode
    modelId: str = ""
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    minLesionVolumeMm3: Annotated[int, WithinRange(0, 100000)] = DEFAULT_MIN_LESION_VOLUME_MM3


#
# ProstateMetSegWidget
#


class ProstateMetSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ProstateMetSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # The .ui connects the root's mrmlSceneChanged(vtkMRMLScene*) to every node selector.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = ProstateMetSegLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputVolumeChanged)

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
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode
        self.onInputVolumeChanged(self._parameterNode.inputVolume)

    def setParameterNode(self, inputParameterNode: ProstateMetSegParameterNode | None) -> None:
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

    def onInputVolumeChanged(self, volumeNode) -> None:
        if volumeNode is None:
            self.ui.inputInfoLabel.text = ""
            return
        try:
            self.ui.inputInfoLabel.text = self.logic.describeVolume(volumeNode)
        except ValueError as error:
            self.ui.inputInfoLabel.text = str(error)

    def _checkCanApply(self, caller=None, event=None) -> None:
        for button, (enabled, reason) in (
            (self.ui.segmentButton, self.logic.segmentReadiness(self._parameterNode)),
            (self.ui.compareButton, self.logic.compareReadiness(self._parameterNode)),
            (self.ui.exportButton, self.logic.exportReadiness(self._parameterNode)),
        ):
            button.enabled = enabled
            button.toolTip = reason


#
# ProstateMetSegLogic
#


class ProstateMetSegLogic(ScriptedLoadableModuleLogic):
    """Everything ProstateMetSeg computes, callable without the widget: methods take the nodes they work on."""

    # Segmenting, comparing and exporting need engine parts that a later version of LesionSeg adds.
    # Until then their buttons stay disabled and say so, whatever is selected.
    segmentationAvailable = False
    comparisonAvailable = False
    exportAvailable = False

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return ProstateMetSegParameterNode(super().getParameterNode())

    def volumeImage(self, volumeNode: vtkMRMLScalarVolumeNode) -> Image:
        """The volume as the engine sees it (LPS geometry); raises ValueError for a volume it cannot use."""
        return lesionseg.mrml.image_from_volume_node(volumeNode)

    def describeVolume(self, volumeNode: vtkMRMLScalarVolumeNode) -> str:
        """One line on the volume's grid: size, spacing and orientation."""
        image = self.volumeImage(volumeNode)
        return _("{size} voxels, {spacing} mm, orientation {orientation}").format(
            size="×".join(str(n) for n in image.size),
            spacing="×".join(f"{s:.3g}" for s in image.spacing),
            orientation=orientation_code(image.direction),
        )

    def setInputVolume(self, parameterNode: ProstateMetSegParameterNode, volumeNode: vtkMRMLScalarVolumeNode) -> str:
        """Choose the volume to segment, after checking the engine can read it; returns its description."""
        description = self.describeVolume(volumeNode)
        parameterNode.inputVolume = volumeNode
        logging.info(f"ProstateMetSeg input: {volumeNode.GetName()} ({description})")
        return description

    def segmentReadiness(self, parameterNode: ProstateMetSegParameterNode | None) -> tuple[bool, str]:
        """Whether Segment can run now, and the tooltip that says why or why not."""
        if not self.segmentationAvailable:
            return False, _("Segmenting arrives in a later version of LesionSeg.")
        if parameterNode is None or not parameterNode.inputVolume:
            return False, _("Select an input volume.")
        return True, _("Segment metastases in the input volume.")

    def compareReadiness(self, parameterNode: ProstateMetSegParameterNode | None) -> tuple[bool, str]:
        """Whether Compare with reference can run now, and the tooltip that says why or why not."""
        if not self.comparisonAvailable:
            return False, _("Comparing with a reference arrives in a later version of LesionSeg.")
        if parameterNode is None or not parameterNode.outputSegmentation or not parameterNode.referenceSegmentation:
            return False, _("Select a result and a reference segmentation.")
        return True, _("Compare the result with the reference segmentation.")

    def exportReadiness(self, parameterNode: ProstateMetSegParameterNode | None) -> tuple[bool, str]:
        """Whether Export can run now, and the tooltip that says why or why not."""
        if not self.exportAvailable:
            return False, _("DICOM RTSTRUCT export arrives in a later version of LesionSeg.")
        if parameterNode is None or not parameterNode.outputSegmentation:
            return False, _("Select the segmentation to export.")
        return True, _("Export the segmentation as DICOM RTSTRUCT.")


#
# ProstateMetSegTest
#


class ProstateMetSegTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_choosing_a_ct_fills_the_inputs_and_every_action_says_it_is_not_available_yet()
        self.setUp()
        self.test_flipped_lesion_labelmap_keeps_its_voxels_and_volume_through_the_bridge()

    def test_choosing_a_ct_fills_the_inputs_and_every_action_says_it_is_not_available_yet(self):
        self.delayDisplay("Choosing a CT volume")
        ramp = np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8) - 100
        image = Image(ramp, spacing=(0.8, 0.8, 2.5), origin=(120.5, 95.25, -310.0), direction=np.diag([-1, -1, 1]))
        volume = lesionseg.mrml.volume_node_from_image(slicer.mrmlScene, image, "ProstateMetSegTestCT")

        logic = ProstateMetSegLogic()
        parameterNode = logic.getParameterNode()
        description = logic.setInputVolume(parameterNode, volume)
        self.assertEqual(parameterNode.inputVolume, volume)
        self.assertIn("8×7×6", description)
        self.assertEqual(parameterNode.minLesionVolumeMm3, DEFAULT_MIN_LESION_VOLUME_MM3)

        widget = slicer.util.getModuleWidget("ProstateMetSeg")
        widget.enter()
        try:
            self.assertEqual(widget.ui.inputVolumeSelector.currentNode(), volume)
            self.assertEqual(widget.ui.minLesionVolumeSpinBox.value, DEFAULT_MIN_LESION_VOLUME_MM3)
            self.assertEqual(widget.ui.deviceComboBox.currentText, "auto")
            self.assertIn("8×7×6", widget.ui.inputInfoLabel.text)
            for button in (widget.ui.segmentButton, widget.ui.compareButton, widget.ui.exportButton):
                self.assertFalse(button.enabled, button.text)
                self.assertIn("later version", button.toolTip)
            self.assertFalse(widget.ui.modelComboBox.enabled)
            self.assertTrue(widget.ui.logTextEdit.readOnly)

            # The spin box writes through to the parameter node, so the value survives a scene save.
            widget.ui.minLesionVolumeSpinBox.value = 250
            self.assertEqual(parameterNode.minLesionVolumeMm3, 250)
        finally:
            widget.exit()
        self.delayDisplay("Test passed")

    def test_flipped_lesion_labelmap_keeps_its_voxels_and_volume_through_the_bridge(self):
        self.delayDisplay("Round trip of a lesion labelmap on a flipped, anisotropic grid")
        labels = np.zeros((7, 9, 9), np.uint8)
        labels[2:5, 3:6, 3:6] = 1  # a 27-voxel lesion
        labels[6, 8, 8] = 2  # a single-voxel lesion in the far corner
        image = Image(labels, (0.7, 0.7, 5.0), (175.0, 160.3, 410.0), np.diag([-1.0, 1.0, -1.0]))
        node = lesionseg.mrml.volume_node_from_image(
            slicer.mrmlScene, image, "ProstateMetSegTestLesions", labelmap=True
        )
        self.assertEqual(node.GetClassName(), "vtkMRMLLabelMapVolumeNode")

        back = lesionseg.mrml.image_from_volume_node(node)
        np.testing.assert_array_equal(back.array, labels)
        np.testing.assert_allclose(back.origin, image.origin, atol=1e-6)
        np.testing.assert_allclose(back.direction, image.direction, atol=1e-6)
        # Lesion volumes are what the minimum-volume rule compares: 27 voxels of 0.7×0.7×5 mm.
        self.assertAlmostEqual(float((back.array == 1).sum()) * back.voxel_volume_mm3, 27 * 0.7 * 0.7 * 5.0, places=4)

        ijkToRas = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(ijkToRas)
        ras = ijkToRas.MultiplyPoint([8.0, 8.0, 6.0, 1.0])[:3]
        np.testing.assert_allclose([-ras[0], -ras[1], ras[2]], image.world((8, 8, 6)), atol=1e-4)
        self.delayDisplay("Test passed")
