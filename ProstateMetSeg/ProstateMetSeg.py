import logging
import os
import sys
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
from LesionSegLib.widgets import LesionReviewPanel, LesionTablePanel

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
Segments metastases of prostate cancer in a CT volume with an AI model, lists the lesions of at least a
minimum volume (click one to go to it), compares a segmentation with a reference segmentation and exports
it as DICOM RTSTRUCT, DICOM SEG or a .seg.nrrd file.
LesionSeg's documentation is README.md in its source folder.
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
    comparisonTable - Where the latest comparison's metrics are.
    lesionTable - Where the latest lesion table is.
    modelId - Id of the model to run; the model list is filled from the engine's model registry.
    device - Where the network runs: "auto" picks CUDA when PyTorch sees a GPU.
    minLesionVolumeMm3 - The lesion table lists lesions of at least this volume; the segmentation keeps the others.
    exportFormat - RTSTRUCT, DICOM SEG or NRRD (.seg.nrrd).
    exportAcceptedOnly - Export only the lesions accepted in the lesion review (other segments whole).
    reviewer - Who accepts and rejects lesions in the review (recorded with each decision).
    lesionThreshold - Lesion probability above which a voxel is lesion; 0 uses the model's default.
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
    lesionTable: vtkMRMLTableNode
    modelId: str = ""
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    minLesionVolumeMm3: Annotated[int, WithinRange(0, 100000)] = DEFAULT_MIN_LESION_VOLUME_MM3
    exportFormat: Annotated[str, Choice(list(LesionSegLib.export.FORMATS))] = LesionSegLib.export.RTSTRUCT
    exportAcceptedOnly: bool = False
    reviewer: str = ""
    lesionThreshold: Annotated[float, WithinRange(0.0, 0.95)] = 0.0
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
# ProstateMetSegWidget
#


class ProstateMetSegWidget(SegmentationModuleWidget):
    """The panel: LesionSegLib's SegmentationModuleWidget builds and binds it from Resources/UI/ProstateMetSeg.ui;
    this module adds the lesion table."""

    def createLogic(self):
        return ProstateMetSegLogic()

    def setupPanels(self) -> None:
        super().setupPanels()
        self.lesionPanel = LesionTablePanel(self.ui, self.logic, lambda: self._parameterNode)
        self.reviewPanel = LesionReviewPanel(
            self.ui, self.logic, lambda: self._parameterNode, self.parent, self.onReviewChanged
        )

    def buttonStates(self):
        return (
            super().buttonStates()
            + [(self.ui.lesionTableButton, self.logic.lesionTableReadiness(self._parameterNode))]
            + self.reviewPanel.buttonStates()
        )

    def onReviewChanged(self) -> None:
        """A decision changes the lesions and their status: list them again, and update the buttons."""
        if self._parameterNode and self._parameterNode.lesionTable:
            self.lesionPanel.update()
        self._checkCanApply()

    def onSegmentationAdded(self, segmentationNode) -> None:
        """After segmenting, list the lesions of the new result right away."""
        self.lesionPanel.update()


#
# ProstateMetSegLogic
#


class ProstateMetSegLogic(ScriptedLoadableModuleLogic, SegmentationResultsLogic, SegmentingLogic):
    """Everything ProstateMetSeg computes, callable without the widget: methods take the nodes they work on.

    The lesion table, comparing with a reference and exporting come from LesionSegLib's
    SegmentationResultsLogic, which SpleenSeg shares.
    """

    moduleName = "ProstateMetSeg"
    lesionModels = True
    segmentAction = _("Segment metastases in the input volume.")

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        # The volume handed to the background job is written under Slicer's temporary folder, and the job
        # starts from the environment Slicer itself started with (PythonSlicer sets up its own paths).
        self.workRoot = slicer.app.temporaryPath
        self.childEnvironment = slicer.util.startupEnvironment()

    def getParameterNode(self):
        return ProstateMetSegParameterNode(super().getParameterNode())


#
# ProstateMetSegTest
#


class ProstateMetSegTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        from LesionSegLib.selftest import run_scenarios

        run_scenarios(
            self,
            [
                "test_choosing_a_ct_fills_the_inputs_and_the_actions_wait_for_a_segmentation",
                "test_flipped_lesion_labelmap_keeps_its_voxels_and_volume_through_the_bridge",
                "test_lesion_table_lists_lesions_over_the_minimum_and_a_click_centres_the_views",
                "test_exporting_a_volume_without_dicom_origin_offers_a_seg_nrrd",
                "test_exporting_a_ct_loaded_from_dicom_writes_on_its_series_and_keeps_the_patient",
                "test_exporting_rtstruct_of_a_ct_without_dicom_series_through_slicerrt_keeps_the_hierarchy_patient",
                "test_segmenting_metastases_adds_a_new_node_and_lists_its_lesions",
            ],
            self.delayDisplay,
        )

    def test_choosing_a_ct_fills_the_inputs_and_the_actions_wait_for_a_segmentation(self):
        self.delayDisplay("Choosing a CT volume")
        from LesionSegLib import segmenting

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
        widget.logic.modelsDir = slicer.util.tempDirectory()  # no user model installed there
        widget.enter()
        try:
            self.assertEqual(widget.ui.inputVolumeSelector.currentNode(), volume)
            self.assertEqual(widget.ui.minLesionVolumeSpinBox.value, DEFAULT_MIN_LESION_VOLUME_MM3)
            self.assertEqual(widget.ui.deviceComboBox.currentText, "auto")
            self.assertIn("8×7×6", widget.ui.inputInfoLabel.text)
            # Only lesion models are listed; the built-in spleen model is SpleenSeg's.
            ids = [e.spec.id for e in widget.segmentPanel.entries]
            self.assertNotIn("spleen_ct_segmentation", ids)
            if segmenting.packages_problem():
                # A fresh Slicer: the model list needs packages it lacks, and Segment offers to install them.
                self.assertTrue(widget.ui.segmentButton.enabled, widget.ui.segmentButton.toolTip)
                self.assertEqual(ids, [])
                self.assertIn("click Segment to install", widget.ui.segmentButton.toolTip)
                self.assertFalse(widget.ui.modelComboBox.enabled)
            else:
                # The extension ships a demo lesion model (synthetic phantoms): listed, never preselected, and
                # ready to run once chosen, with its intended use shown first.
                self.assertIn("demo-lesion", ids)
                self.assertTrue(widget.ui.modelComboBox.enabled)
                self.assertEqual(widget.ui.modelComboBox.currentIndex, -1)
                self.assertFalse(widget.ui.segmentButton.enabled)
                self.assertIn("Choose", widget.ui.segmentButton.toolTip)
                widget.ui.modelComboBox.currentIndex = ids.index("demo-lesion")
                self.assertIn("not for clinical use", widget.ui.modelInfoLabel.text)
                self.assertTrue(widget.ui.segmentButton.enabled, widget.ui.segmentButton.toolTip)
            for button in (widget.ui.compareButton, widget.ui.exportButton, widget.ui.lesionTableButton):
                self.assertFalse(button.enabled, button.text)
                self.assertIn("Select", button.toolTip)
            self.assertTrue(widget.ui.logTextEdit.readOnly)

            # The spin box writes through to the parameter node, so the value survives a scene save.
            widget.ui.minLesionVolumeSpinBox.value = 250
            self.assertEqual(parameterNode.minLesionVolumeMm3, 250)
        finally:
            widget.exit()
            widget.logic.modelsDir = None
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

    def test_lesion_table_lists_lesions_over_the_minimum_and_a_click_centres_the_views(self):
        self.delayDisplay("Lesion table of a metastasis segmentation")
        values = np.full((10, 30, 30), 30, np.int16)
        labels = np.zeros(values.shape, np.uint8)
        labels[2:6, 4:12, 4:12] = 1  # 256 voxels of 1 mm³ × 2.5 = 640 mm³
        values[2:6, 4:12, 4:12] = 700
        labels[7:9, 20:23, 20:23] = 2  # 18 voxels = 45 mm³: under the default 100 mm³
        image = Image(values, (1.0, 1.0, 2.5), (-40.0, 60.0, -200.0), np.diag([-1.0, -1.0, 1.0]))
        volume = lesionseg.mrml.volume_node_from_image(slicer.mrmlScene, image, "ProstateMetSegLesionCT")
        segmentation = lesionseg.mrml.segmentation_node_from_labelmap(
            slicer.mrmlScene, image.with_array(labels), "Mets", {1: "Bone metastasis", 2: "Node"}, volume
        )
        sliceNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSliceNode")
        if sliceNode is None:  # no main window, so no views: give the jump a slice node to move
            sliceNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSliceNode")
            sliceNode.SetLayoutName("Red")

        widget = slicer.util.getModuleWidget("ProstateMetSeg")
        widget.enter()
        try:
            widget._parameterNode.inputVolume = volume
            widget._parameterNode.outputSegmentation = segmentation
            self.assertTrue(widget.ui.lesionTableButton.enabled)
            widget.ui.lesionTableButton.click()
            table = widget._parameterNode.lesionTable
            self.assertEqual(table.GetNumberOfRows(), 1)
            self.assertAlmostEqual(table.GetTable().GetColumnByName("volume_ml").GetValue(0), 0.64, places=6)
            self.assertEqual(table.GetTable().GetColumnByName("max_hu").GetValue(0), 700)
            self.assertIn(
                "1 lesion of at least 100 mm³ listed; 1 smaller lesion is not listed", widget.ui.lesionCountLabel.text
            )
            # The minimum filters the table only, and the table follows it: both lesions at 0 mm³.
            widget.ui.minLesionVolumeSpinBox.value = 0
            self.assertEqual(table.GetNumberOfRows(), 2)
            self.assertEqual(widget._parameterNode.minLesionVolumeMm3, 0)
            self.assertIn("2 lesions of at least 0 mm³ listed.", widget.ui.lesionCountLabel.text)
            self.assertEqual(segmentation.GetSegmentation().GetNumberOfSegments(), 2)
            widget.ui.minLesionVolumeSpinBox.value = 100
            self.assertEqual(table.GetNumberOfRows(), 1)

            widget.lesionPanel.onRowClicked(widget.ui.lesionTableView.model().index(0, 0))
            r, a, s = (
                table.GetTable().GetColumnByName(name).GetValue(0)
                for name in ("centroid_r", "centroid_a", "centroid_s")
            )
            sliceToRas = sliceNode.GetSliceToRAS()
            for axis, expected in enumerate((r, a, s)):
                self.assertAlmostEqual(sliceToRas.GetElement(axis, 3), expected, places=4)

            widget.ui.minLesionVolumeSpinBox.value = 0
            widget.ui.lesionTableButton.click()
            self.assertEqual(widget._parameterNode.lesionTable.GetNumberOfRows(), 2)
        finally:
            widget.exit()
        self.delayDisplay("Test passed")

    def test_exporting_a_volume_without_dicom_origin_offers_a_seg_nrrd(self):
        self.delayDisplay("Export of a segmentation on a volume that did not come from DICOM")
        labels = np.zeros((6, 12, 12), np.uint8)
        labels[2:4, 3:8, 3:8] = 1
        image = Image(labels.astype(np.int16), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
        volume = lesionseg.mrml.volume_node_from_image(slicer.mrmlScene, image, "ProstateMetSegExportCT")
        segmentation = lesionseg.mrml.segmentation_node_from_labelmap(
            slicer.mrmlScene, image.with_array(labels), "ProstateMetSegExportSeg", {1: "Bone metastasis"}, volume
        )
        logic = ProstateMetSegLogic()
        plan = logic.planExport(volume, segmentation, LesionSegLib.export.DICOM_SEG)
        self.assertFalse(plan.possible)
        self.assertIn("not loaded from DICOM", plan.problem)
        nrrd = logic.planExport(volume, segmentation, LesionSegLib.export.SEG_NRRD)
        written = logic.exportSegmentation(nrrd, volume, segmentation, slicer.util.tempDirectory(), False, logging.info)
        self.assertTrue(written[0].name.endswith(".seg.nrrd"))
        self.delayDisplay("Test passed")

    def test_exporting_a_ct_loaded_from_dicom_writes_on_its_series_and_keeps_the_patient(self):
        self.delayDisplay("Export of a segmentation on a CT loaded through the DICOM module")
        import pydicom
        from DICOMLib import DICOMUtils

        from lesionseg.dicom import write_ct_series

        values = np.full((8, 20, 20), 30, np.int16)
        labels = np.zeros(values.shape, np.uint8)
        labels[2:6, 5:12, 6:14] = 1
        image = Image(values, (0.9, 0.9, 2.5), (-60.0, 40.0, -120.0), np.eye(3))
        seriesFolder = slicer.util.tempDirectory()
        files = write_ct_series(
            image,
            seriesFolder,
            patient_id="PMS-0042",
            patient_name="Lindqvist^Per",
            uid_seed="ProstateMetSegSelfTest",
            extra={"PatientBirthDate": "19510822", "PatientSex": "M", "AccessionNumber": "A-5521"},
        )
        source = pydicom.dcmread(str(files[0]), stop_before_pixels=True)
        # The export folder already holds another patient's series (think of a Desktop): it must stay out
        # of the database, which gets only the files the export wrote.
        exportFolder = slicer.util.tempDirectory()
        write_ct_series(
            image, os.path.join(exportFolder, "other"), patient_id="OTHER-1", uid_seed="ProstateMetSegSelfTestOther"
        )
        with DICOMUtils.TemporaryDICOMDatabase() as database:
            self.assertTrue(DICOMUtils.importDicom(seriesFolder, database))
            study = database.studiesForPatient(database.patients()[0])[0]
            loaded = DICOMUtils.loadSeriesByUID([database.seriesForStudy(study)[0]])
            volume = slicer.mrmlScene.GetNodeByID(loaded[0])
            self.assertEqual(len(volume.GetAttribute("DICOM.instanceUIDs").split()), 8)
            grid = lesionseg.mrml.image_from_volume_node(volume)
            segmentation = lesionseg.mrml.segmentation_node_from_labelmap(
                slicer.mrmlScene, grid.with_array(labels), "Mets", {1: "Bone metastasis of the left ilium"}, volume
            )
            logic = ProstateMetSegLogic()

            # RTSTRUCT: LesionSeg's writer on the CT's own slices, whether or not SlicerRT is installed.
            plan = logic.planExport(volume, segmentation, LesionSegLib.export.RTSTRUCT)
            self.assertEqual(plan.route, LesionSegLib.export.ROUTE_ENGINE_RTSTRUCT, plan.problem)
            written = logic.exportSegmentation(plan, volume, segmentation, exportFolder, True, logging.info)
            self.assertEqual(len(written), 1)
            rtstruct = pydicom.dcmread(str(written[0]))
            self.assertEqual(rtstruct.Modality, "RTSTRUCT")
            for keyword in (
                "PatientName",
                "PatientID",
                "PatientBirthDate",
                "PatientSex",
                "StudyInstanceUID",
                "AccessionNumber",
                "FrameOfReferenceUID",
            ):
                self.assertEqual(str(rtstruct.get(keyword, "")), str(source.get(keyword, "")), keyword)
            names = [roi.ROIName for roi in rtstruct.StructureSetROISequence]
            self.assertTrue(all(len(name) <= 16 for name in names), names)
            self.assertEqual(len(database.patients()), 1)  # the other patient's series was not imported
            self.assertTrue(database.fileForInstance(str(rtstruct.SOPInstanceUID)))
            self.assertEqual(len(database.seriesForStudy(study)), 2)  # the CT and its structure set

            # DICOM SEG needs highdicom, which Slicer 5.10 does not ship: there the export is refused and
            # says what to install.
            plan = logic.planExport(volume, segmentation, LesionSegLib.export.DICOM_SEG)
            if LesionSegLib.export.dicomseg_packages_problem():
                self.assertFalse(plan.possible)
                self.assertIn("highdicom", plan.problem)
                self.assertIn(LesionSegLib.export.RTSTRUCT, plan.alternatives)
            else:
                folder = slicer.util.tempDirectory()
                written = logic.exportSegmentation(plan, volume, segmentation, folder, False, logging.info)
                seg = pydicom.dcmread(str(written[0]), stop_before_pixels=True)
                self.assertEqual((seg.Modality, str(seg.PatientID)), ("SEG", "PMS-0042"))
            # The user's segmentation keeps its full name whatever the export shortened.
            self.assertEqual(
                segmentation.GetSegmentation().GetNthSegment(0).GetName(), "Bone metastasis of the left ilium"
            )
        self.delayDisplay("Test passed")

    def test_exporting_rtstruct_of_a_ct_without_dicom_series_through_slicerrt_keeps_the_hierarchy_patient(self):
        self.delayDisplay("RTSTRUCT through SlicerRT for a CT that has no DICOM series")
        import pydicom

        from LesionSegLib import dicomapp

        if not dicomapp.slicerrt_available():
            self.skipTest("SlicerRT is not loaded (run_slicer_selftests.sh loads it from SLICERRT_MODULE_PATHS)")
        labels = np.zeros((6, 12, 12), np.uint8)
        labels[2:4, 3:8, 3:8] = 1
        image = Image((labels * 200 + 20).astype(np.int16), (1.0, 1.0, 2.0), (-6.0, -6.0, -80.0), np.eye(3))
        volume = lesionseg.mrml.volume_node_from_image(slicer.mrmlScene, image, "ProstateMetSegResampledCT")
        segmentation = lesionseg.mrml.segmentation_node_from_labelmap(
            slicer.mrmlScene, image.with_array(labels), "Mets", {1: "Bone metastasis"}, volume
        )
        # The patient and study a user gives the CT in the Data module (or that a DICOM-loaded study carries).
        studyUid = "1.2.826.0.1.3680043.8.498.90210.7"
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Lindqvist")
        for name, value in (("PatientName", "Lindqvist^Per"), ("PatientID", "PMS-0042"), ("PatientSex", "M")):
            hierarchy.SetItemAttribute(patient, "DICOM." + name, value)
        study = hierarchy.CreateStudyItem(patient, "Staging CT")
        hierarchy.SetItemUID(study, "DICOM", studyUid)
        hierarchy.SetItemParent(hierarchy.GetItemByDataNode(volume), study)

        logic = ProstateMetSegLogic()
        plan = logic.planExport(volume, segmentation, LesionSegLib.export.RTSTRUCT)
        self.assertEqual(plan.route, LesionSegLib.export.ROUTE_SLICERRT, plan.problem)
        written = logic.exportSegmentation(plan, volume, segmentation, slicer.util.tempDirectory(), False, logging.info)
        headers = [pydicom.dcmread(str(path), stop_before_pixels=True) for path in written]
        self.assertEqual(sorted({str(h.Modality) for h in headers}), ["CT", "RTSTRUCT"])
        for header in headers:
            self.assertEqual(
                (str(header.PatientName), str(header.PatientID), str(header.PatientSex), str(header.StudyInstanceUID)),
                ("Lindqvist^Per", "PMS-0042", "M", studyUid),
            )
        ctSeries = {str(h.SeriesInstanceUID) for h in headers if h.Modality == "CT"}
        self.assertEqual(len(ctSeries), 1)  # the new CT series SlicerRT wrote, which the RTSTRUCT references
        self.delayDisplay("Test passed")

    def test_segmenting_metastases_adds_a_new_node_and_lists_its_lesions(self):
        self.delayDisplay("Segmenting metastases with a tiny lesion model, then the lesion table")
        from LesionSegLib import segmenting
        from LesionSegLib.selftest import write_threshold_model

        if segmenting.missing_requirements():
            self.skipTest(f"this Slicer lacks {segmenting.missing_requirements()}")
        values = np.full((12, 26, 26), 40, np.int16)
        values[2:7, 3:11, 3:11] = 900  # a sclerotic bone metastasis: 320 voxels of 2 mm³
        values[9:11, 18:21, 18:21] = 900  # a small one: 18 voxels = 36 mm³, under 100 mm³
        image = Image(values, (1.0, 1.0, 2.0), (-30.0, 25.0, -150.0), np.diag([-1.0, -1.0, 1.0]))
        volume = lesionseg.mrml.volume_node_from_image(slicer.mrmlScene, image, "ProstateMetSegE2E")

        widget = slicer.util.getModuleWidget("ProstateMetSeg")
        logic = widget.logic
        logic.modelsDir = slicer.util.tempDirectory()
        write_threshold_model(logic.modelsDir, "tiny-mets", "bone metastasis", threshold_hu=300)
        widget.enter()
        try:
            self.assertIn("tiny-mets", [e.spec.id for e in logic.modelEntries()])
            result = logic.segmentBlocking(volume, "tiny-mets", "cpu")
            self.assertEqual(result.GetName(), "ProstateMetSegE2E – ProstateMetSeg 0.0.1-selftest")
            self.assertEqual(result.GetSegmentation().GetNthSegment(0).GetName(), "bone metastasis")
            self.assertEqual(result.GetNodeReference(result.GetReferenceImageGeometryReferenceRole()), volume)
            self.assertEqual(result.GetAttribute(segmenting.MODEL_ID_ATTRIBUTE), "tiny-mets")

            widget._parameterNode.inputVolume = volume
            widget._parameterNode.outputSegmentation = result
            widget._parameterNode.minLesionVolumeMm3 = DEFAULT_MIN_LESION_VOLUME_MM3
            widget.onSegmentationAdded(result)
            table = widget._parameterNode.lesionTable
            self.assertEqual(table.GetNumberOfRows(), 1)
            self.assertAlmostEqual(table.GetTable().GetColumnByName("volume_ml").GetValue(0), 0.64, places=6)
            self.assertEqual(table.GetTable().GetColumnByName("mean_hu").GetValue(0), 900)

            # The detection threshold box is bound to the parameter node; at 0 it reads "model default".
            spinBox = widget.ui.lesionThresholdSpinBox
            self.assertEqual(spinBox.specialValueText, "model default")
            spinBox.value = 0.0
            self.assertIsNone(logic.segmentOptions(widget._parameterNode)["threshold"])
            spinBox.value = 0.3
            self.assertAlmostEqual(logic.segmentOptions(widget._parameterNode)["threshold"], 0.3)
            spinBox.value = 0.0
        finally:
            widget.exit()
            logic.modelsDir = None
        self.delayDisplay("Test passed")
