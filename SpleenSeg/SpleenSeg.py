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
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
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


#
# SpleenSeg
#


class SpleenSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Spleen Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["LesionSeg developers"]
        self.parent.helpText = _("""
Segments the spleen in a CT volume with an AI model (MONAI's spleen CT segmentation network).
This version selects the inputs only: segmenting arrives in a later version of LesionSeg.
See the <a href="https://github.com/lesionseg/SlicerLesionSeg">LesionSeg documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Part of the LesionSeg extension. Its engine builds on 3D Slicer, MONAI, PyTorch and SimpleITK.
""")


#
# SpleenSegParameterNode
#


@parameterNodeWrapper
class SpleenSegParameterNode:
    """
    The choices of the SpleenSeg module, kept in the scene.

    inputVolume - The CT volume to segment.
    outputSegmentation - The segmentation that holds the latest result (each run makes a new one).
    modelId - Id of the model to run; the model list is filled from the engine's model registry.
    device - Where the network runs: "auto" picks CUDA when PyTorch sees a GPU.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    modelId: str = ""
    device: Annotated[str, Choice(list(DEVICES))] = "auto"


#
# SpleenSegWidget
#


class SpleenSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SpleenSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # The .ui connects the root's mrmlSceneChanged(vtkMRMLScene*) to every node selector.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = SpleenSegLogic()

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

    def setParameterNode(self, inputParameterNode: SpleenSegParameterNode | None) -> None:
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
        enabled, reason = self.logic.segmentReadiness(self._parameterNode)
        self.ui.segmentButton.enabled = enabled
        self.ui.segmentButton.toolTip = reason


#
# SpleenSegLogic
#


class SpleenSegLogic(ScriptedLoadableModuleLogic):
    """Everything SpleenSeg computes, callable without the widget: methods take the nodes they work on."""

    # Segmenting needs the inference engine, which a later version of LesionSeg adds. Until then the
    # Segment button stays disabled and says so, whatever is selected.
    segmentationAvailable = False

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return SpleenSegParameterNode(super().getParameterNode())

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

    def setInputVolume(self, parameterNode: SpleenSegParameterNode, volumeNode: vtkMRMLScalarVolumeNode) -> str:
        """Choose the volume to segment, after checking the engine can read it; returns its description."""
        description = self.describeVolume(volumeNode)
        parameterNode.inputVolume = volumeNode
        logging.info(f"SpleenSeg input: {volumeNode.GetName()} ({description})")
        return description

    def segmentReadiness(self, parameterNode: SpleenSegParameterNode | None) -> tuple[bool, str]:
        """Whether Segment can run now, and the tooltip that says why or why not."""
        if not self.segmentationAvailable:
            return False, _("Segmenting arrives in a later version of LesionSeg.")
        if parameterNode is None or not parameterNode.inputVolume:
            return False, _("Select an input volume.")
        return True, _("Segment the spleen in the input volume.")


#
# SpleenSegTest
#


class SpleenSegTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_choosing_a_ct_fills_the_inputs_and_segment_says_it_is_not_available_yet()
        self.setUp()
        self.test_oblique_ct_keeps_every_voxel_in_place_through_the_bridge()

    def test_choosing_a_ct_fills_the_inputs_and_segment_says_it_is_not_available_yet(self):
        self.delayDisplay("Choosing a CT volume")
        ramp = np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8) - 100
        image = Image(ramp, spacing=(0.8, 0.8, 2.5), origin=(120.5, 95.25, -310.0), direction=np.diag([-1, -1, 1]))
        volume = lesionseg.mrml.volume_node_from_image(slicer.mrmlScene, image, "SpleenSegTestCT")

        logic = SpleenSegLogic()
        parameterNode = logic.getParameterNode()
        description = logic.setInputVolume(parameterNode, volume)
        self.assertEqual(parameterNode.inputVolume, volume)
        self.assertIn("8×7×6", description)
        self.assertEqual(parameterNode.device, "auto")

        widget = slicer.util.getModuleWidget("SpleenSeg")
        widget.enter()
        try:
            self.assertEqual(widget.ui.inputVolumeSelector.currentNode(), volume)
            self.assertEqual(widget.ui.deviceComboBox.currentText, "auto")
            self.assertIn("8×7×6", widget.ui.inputInfoLabel.text)
            self.assertFalse(widget.ui.segmentButton.enabled)
            self.assertIn("later version", widget.ui.segmentButton.toolTip)
            self.assertFalse(widget.ui.modelComboBox.enabled)
            self.assertTrue(widget.ui.logTextEdit.readOnly)
        finally:
            widget.exit()
        self.delayDisplay("Test passed")

    def test_oblique_ct_keeps_every_voxel_in_place_through_the_bridge(self):
        self.delayDisplay("Round trip of an oblique volume through the MRML bridge")
        c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
        direction = np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
        k, j, i = np.indices((5, 8, 6))
        image = Image((i * 7 + j * 131 + k * 1009).astype(np.int16), (0.9, 1.1, 2.0), (-12.3, 45.6, -78.9), direction)
        volume = lesionseg.mrml.volume_node_from_image(slicer.mrmlScene, image, "SpleenSegTestOblique")

        # Slicer's own view of the node: voxel values, and where it puts the last voxel in RAS.
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), image.array)
        ijkToRas = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(ijkToRas)
        last = [n - 1 for n in image.size]
        ras = ijkToRas.MultiplyPoint([*map(float, last), 1.0])[:3]
        np.testing.assert_allclose([-ras[0], -ras[1], ras[2]], image.world(last), atol=1e-4)

        back = lesionseg.mrml.image_from_volume_node(volume)
        np.testing.assert_array_equal(back.array, image.array)
        np.testing.assert_allclose(back.spacing, image.spacing, atol=1e-6)
        np.testing.assert_allclose(back.origin, image.origin, atol=1e-6)
        np.testing.assert_allclose(back.direction, image.direction, atol=1e-6)
        self.delayDisplay("Test passed")
