import logging
import os
import sys
import time
from typing import Annotated

import numpy as np
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
)

if sys.version_info < (3, 10):  # noqa: UP036 (this file runs in whatever Python the user's Slicer embeds)
    # Slicer 5.8 and older embed Python 3.9; the engine needs 3.10 or newer (Slicer 5.10 has 3.12).
    raise ImportError(
        f"LesionSeg needs Slicer 5.10 or newer (Python >= 3.10); this Slicer runs Python {sys.version.split()[0]}"
    )

try:
    import lesionseg.mrml
    import LesionSegLib.export
except ModuleNotFoundError as error:
    if error.name not in ("lesionseg", "LesionSegLib"):
        raise
    # The extension installs the engine and LesionSegLib beside this file (qt-scripted-modules/). A
    # developer who adds this folder under Application Settings > Modules runs the source tree instead,
    # where both are in the repository root: this file's grand-parent folder.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import lesionseg.mrml
    import LesionSegLib.export
from lesionseg.image import Image
from LesionSegLib.modulewidget import SegmentationModuleWidget
from LesionSegLib.results import SegmentationResultsLogic
from LesionSegLib.segmenting import SegmentingLogic

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
Segments the spleen in a CT volume with an AI model (MONAI's spleen CT segmentation network),
compares a segmentation with a reference (e.g. your corrected one) and exports it as DICOM RTSTRUCT,
DICOM SEG or a .seg.nrrd file.
LesionSeg's documentation is README.md in its source folder.
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
    referenceSegmentation - A trusted segmentation of the same volume to compare the result with.
    comparisonTable - Where the latest comparison's metrics are.
    modelId - Id of the model to run; the model list is filled from the engine's model registry.
    device - Where the network runs: "auto" picks CUDA when PyTorch sees a GPU.
    exportFormat - RTSTRUCT, DICOM SEG or NRRD (.seg.nrrd).
    cropBody - Segment only the box around the body, skipping the air around it.
    uncertainty - An uncertainty overlay and a confidence per lesion (flipped copies too, if trained with flips).
    channelVolume - The second input image of a model that takes two (e.g. the PET of a PET/CT model).
    channelVolume3, channelVolume4 - The third and fourth input images of a model that takes more.
    nnunetFolds, nnunetCheckpoint, nnunetMirroring, nnunetTileStepSize - How an imported nnU-Net model runs: folds
        to average (empty: all), checkpoint file, test-time mirroring (auto: on a GPU only) and sliding-window step.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    referenceSegmentation: vtkMRMLSegmentationNode
    comparisonTable: vtkMRMLTableNode
    modelId: str = ""
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    exportFormat: Annotated[str, Choice(list(LesionSegLib.export.FORMATS))] = LesionSegLib.export.RTSTRUCT
    cropBody: bool = False
    uncertainty: bool = False
    channelVolume: vtkMRMLScalarVolumeNode
    channelVolume3: vtkMRMLScalarVolumeNode
    channelVolume4: vtkMRMLScalarVolumeNode
    nnunetFolds: str = ""
    nnunetCheckpoint: str = "checkpoint_final.pth"
    nnunetMirroring: Annotated[str, Choice(["auto", "on", "off"])] = "auto"
    nnunetTileStepSize: Annotated[float, WithinRange(0.05, 1.0)] = 0.5


#
# SpleenSegWidget
#


class SpleenSegWidget(SegmentationModuleWidget):
    """The panel: LesionSegLib's SegmentationModuleWidget builds and binds it from Resources/UI/SpleenSeg.ui."""

    def createLogic(self):
        return SpleenSegLogic()


#
# SpleenSegLogic
#


class SpleenSegLogic(ScriptedLoadableModuleLogic, SegmentationResultsLogic, SegmentingLogic):
    """Everything SpleenSeg computes, callable without the widget: methods take the nodes they work on.

    Comparing with a reference and exporting come from LesionSegLib's SegmentationResultsLogic, which
    ProstateMetSeg shares.
    """

    moduleName = "SpleenSeg"
    lesionModels = False
    segmentAction = _("Segment the spleen in the input volume.")

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        # The volume handed to the background job is written under Slicer's temporary folder, and the job
        # starts from the environment Slicer itself started with (PythonSlicer sets up its own paths).
        self.workRoot = slicer.app.temporaryPath
        self.childEnvironment = slicer.util.startupEnvironment()

    def getParameterNode(self):
        return SpleenSegParameterNode(super().getParameterNode())


#
# SpleenSegTest
#


class SpleenSegTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        from LesionSegLib.selftest import run_scenarios

        run_scenarios(
            self,
            [
                "test_choosing_a_ct_lists_the_models_and_readies_segment",
                "test_segmenting_a_small_volume_adds_a_new_named_node_on_the_input_grid",
                "test_oblique_ct_keeps_every_voxel_in_place_through_the_bridge",
                "test_comparing_with_a_corrected_segmentation_fills_the_metrics_table",
                "test_exporting_a_volume_without_dicom_origin_offers_a_seg_nrrd",
            ],
            self.delayDisplay,
        )

    def _installTinyModel(self) -> str:
        """A real, tiny model (thresholds CT at 100 HU) as a user model in a fresh models folder."""
        from LesionSegLib.selftest import write_threshold_model

        modelsDir = slicer.util.tempDirectory()
        write_threshold_model(modelsDir, "tiny-spleen", "spleen")
        return modelsDir

    def test_choosing_a_ct_lists_the_models_and_readies_segment(self):
        self.delayDisplay("Choosing a CT volume and a model")
        from LesionSegLib import segmenting

        if segmenting.missing_requirements():  # the tiny model's weights are written with torch and safetensors
            self.skipTest(f"this Slicer lacks {segmenting.missing_requirements()}")
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
        widget.logic.modelsDir = self._installTinyModel()
        widget.enter()
        try:
            self.assertEqual(widget.ui.inputVolumeSelector.currentNode(), volume)
            self.assertEqual(widget.ui.deviceComboBox.currentText, "auto")
            self.assertIn("8×7×6", widget.ui.inputInfoLabel.text)
            self.assertTrue(widget.ui.logTextEdit.readOnly)
            ids = [entry.spec.id for entry in widget.segmentPanel.entries]
            self.assertIn("tiny-spleen", ids)
            self.assertTrue(widget.ui.modelComboBox.enabled)

            widget.ui.modelComboBox.currentIndex = ids.index("tiny-spleen")
            self.assertEqual(widget._parameterNode.modelId, "tiny-spleen")
            self.assertIn("0.0.1-selftest", widget.ui.modelComboBox.currentText)
            self.assertTrue(widget.ui.segmentButton.enabled, widget.ui.segmentButton.toolTip)

            if "spleen_ct_segmentation" in ids:  # the built-in model, whose weights this folder lacks
                widget.ui.modelComboBox.currentIndex = ids.index("spleen_ct_segmentation")
                self.assertFalse(widget.ui.segmentButton.enabled)
                self.assertIn("Download", widget.ui.segmentButton.toolTip)
                self.assertTrue(widget.ui.downloadModelButton.enabled)
                widget.ui.modelComboBox.currentIndex = ids.index("tiny-spleen")

            labelmap = lesionseg.mrml.volume_node_from_image(
                slicer.mrmlScene, image.with_array((ramp > 0).astype(np.uint8)), "SpleenSegTestLabels", labelmap=True
            )
            widget._parameterNode.inputVolume = labelmap
            self.assertFalse(widget.ui.segmentButton.enabled)
            self.assertIn("is a labelmap", widget.ui.segmentButton.toolTip)
            flat = lesionseg.mrml.volume_node_from_image(
                slicer.mrmlScene, Image(np.zeros((1, 9, 9), np.int16), (1, 1, 1), (0, 0, 0), np.eye(3)), "Flat"
            )
            widget._parameterNode.inputVolume = flat
            self.assertIn("is a 2D image", widget.ui.segmentButton.toolTip)
        finally:
            widget.exit()
            widget.logic.modelsDir = None
        self.delayDisplay("Test passed")

    def test_segmenting_a_small_volume_adds_a_new_named_node_on_the_input_grid(self):
        self.delayDisplay("Segmenting a small volume in the background, end to end")
        from LesionSegLib import segmenting

        if segmenting.missing_requirements():
            self.skipTest(f"this Slicer lacks {segmenting.missing_requirements()}")
        values = np.full((10, 24, 20), 30, np.int16)
        values[3:7, 6:15, 5:12] = 180  # brighter than the tiny model's 100 HU threshold
        image = Image(values, (0.9, 1.2, 2.5), (40.0, -15.0, 80.0), np.diag([-1.0, 1.0, -1.0]))
        volume = lesionseg.mrml.volume_node_from_image(slicer.mrmlScene, image, "SpleenSegE2E")

        widget = slicer.util.getModuleWidget("SpleenSeg")
        widget.logic.modelsDir = self._installTinyModel()
        widget.enter()
        try:
            parameterNode = widget._parameterNode
            parameterNode.inputVolume = volume
            parameterNode.device = "cpu"
            parameterNode.outputSegmentation = None
            widget.segmentPanel.refreshModels()
            ids = [entry.spec.id for entry in widget.segmentPanel.entries]
            widget.ui.modelComboBox.currentIndex = ids.index("tiny-spleen")

            # Cancel first: nothing may reach the scene.
            widget.ui.segmentButton.click()
            self.assertEqual(widget.ui.segmentButton.text, "Cancel")
            widget.ui.segmentButton.click()
            self.assertEqual(widget.ui.segmentButton.text, "Segment")
            self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), 0)
            self.assertIn("cancelled", widget.ui.logTextEdit.toPlainText())

            widget.ui.segmentButton.click()
            deadline = time.monotonic() + 300
            while widget.segmentPanel.busy and time.monotonic() < deadline:
                slicer.app.processEvents()
                time.sleep(0.05)
            self.assertFalse(widget.segmentPanel.busy, "segmenting did not finish in 300 s")
            result = parameterNode.outputSegmentation
            self.assertIsNotNone(result, widget.ui.logTextEdit.toPlainText())
            self.assertEqual(result.GetName(), "SpleenSegE2E – SpleenSeg 0.0.1-selftest")
            self.assertEqual(result.GetAttribute(segmenting.MODEL_ID_ATTRIBUTE), "tiny-spleen")
            self.assertEqual(result.GetAttribute(segmenting.MODEL_VERSION_ATTRIBUTE), "0.0.1-selftest")
            self.assertEqual(result.GetNodeReference(result.GetReferenceImageGeometryReferenceRole()), volume)
            segmentation = result.GetSegmentation()
            self.assertEqual(segmentation.GetNumberOfSegments(), 1)
            self.assertEqual(segmentation.GetNthSegment(0).GetName(), "spleen")
            self.assertEqual(widget.ui.progressBar.value, 100)
            labels, _infos = lesionseg.mrml.labelmap_from_segmentation_node(result, volume)
            np.testing.assert_array_equal(labels.array > 0, values > 100)
            # The input is untouched, and it is the only volume: the result is a new segmentation node.
            np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), values)
            self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), 1)
        finally:
            widget.exit()
            widget.logic.modelsDir = None
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

    def _ctWithSpleen(self, name: str):
        values = np.full((12, 24, 24), -50, np.int16)
        labels = np.zeros(values.shape, np.uint8)
        labels[3:9, 6:16, 5:15] = 1
        values[labels == 1] = 60
        image = Image(values, (1.5, 1.5, 2.0), (30.0, -20.0, 100.0), np.diag([-1.0, -1.0, 1.0]))
        volume = lesionseg.mrml.volume_node_from_image(slicer.mrmlScene, image, name)
        return image, labels, volume

    def test_comparing_with_a_corrected_segmentation_fills_the_metrics_table(self):
        self.delayDisplay("Comparing an AI segmentation with a corrected copy")
        from lesionseg.metrics import dice_coefficient

        image, labels, volume = self._ctWithSpleen("SpleenSegCompareCT")
        corrected = labels.copy()
        corrected[3:9, 6:16, 13:15] = 0  # the annotator trimmed two columns
        ai = lesionseg.mrml.segmentation_node_from_labelmap(
            slicer.mrmlScene, image.with_array(labels), "AI", {1: "Spleen"}, volume
        )
        reference = lesionseg.mrml.segmentation_node_from_labelmap(
            slicer.mrmlScene, image.with_array(corrected), "Corrected", {1: "Spleen"}, volume
        )

        widget = slicer.util.getModuleWidget("SpleenSeg")
        widget.enter()
        try:
            parameterNode = widget._parameterNode
            parameterNode.inputVolume = volume
            parameterNode.outputSegmentation = ai
            parameterNode.referenceSegmentation = reference
            widget.comparisonPanel.refreshMapping()
            self.assertEqual(widget.comparisonPanel.mappingEditor.mapping(), {"Spleen": "Spleen"})
            self.assertTrue(widget.ui.compareButton.enabled)
            widget.ui.compareButton.click()
            table = parameterNode.comparisonTable
            self.assertIsNotNone(table)
            self.assertEqual(table.GetNumberOfRows(), 1)
            dice = table.GetTable().GetColumnByName("dice").GetValue(0)
            self.assertAlmostEqual(dice, dice_coefficient(labels == 1, corrected == 1), places=9)
            self.assertEqual(widget.ui.comparisonTableView.mrmlTableNode(), table)
            self.assertTrue(widget.ui.saveComparisonCsvButton.enabled)
        finally:
            widget.exit()
        self.delayDisplay("Test passed")

    def test_exporting_a_volume_without_dicom_origin_offers_a_seg_nrrd(self):
        self.delayDisplay("Export of a segmentation on a volume that did not come from DICOM")
        image, labels, volume = self._ctWithSpleen("SpleenSegExportCT")
        segmentation = lesionseg.mrml.segmentation_node_from_labelmap(
            slicer.mrmlScene, image.with_array(labels), "SpleenSegExportSeg", {1: "Spleen"}, volume
        )
        logic = SpleenSegLogic()
        # Without SlicerRT nothing can write this CT as a DICOM series for the RTSTRUCT to reference.
        plan = logic.planExport(volume, segmentation, LesionSegLib.export.RTSTRUCT, slicerrtAvailable=False)
        self.assertFalse(plan.possible)
        self.assertIn("not loaded from DICOM", plan.problem)
        self.assertEqual(plan.alternatives, [LesionSegLib.export.SEG_NRRD])
        withSlicerRT = logic.planExport(volume, segmentation, LesionSegLib.export.RTSTRUCT, slicerrtAvailable=True)
        self.assertEqual(withSlicerRT.route, LesionSegLib.export.ROUTE_SLICERRT)

        folder = slicer.util.tempDirectory()
        nrrd = logic.planExport(volume, segmentation, LesionSegLib.export.SEG_NRRD)
        written = logic.exportSegmentation(nrrd, volume, segmentation, folder, False, logging.info)
        loaded = slicer.util.loadSegmentation(str(written[0]))
        self.assertEqual(loaded.GetSegmentation().GetNthSegment(0).GetName(), "Spleen")

        widget = slicer.util.getModuleWidget("SpleenSeg")
        widget.enter()
        try:
            widget._parameterNode.inputVolume = volume
            widget._parameterNode.outputSegmentation = segmentation
            widget.exportPanel.updateStatus()
            from LesionSegLib import dicomapp

            expected = "new CT series" if dicomapp.slicerrt_available() else "not loaded from DICOM"
            self.assertIn(expected, widget.ui.exportStatusLabel.text)
        finally:
            widget.exit()
        self.delayDisplay("Test passed")
