"""What a user does in each module's panel, built by Slicer's framework from the module's .ui (per release).

Each panel is made the way Slicer makes it (``<Module>Widget(parent)``, ``setup()``, ``enter()``), so
LesionSegLib.modulewidget and LesionSegLib.widgets run on Slicer's own ScriptedLoadableModuleWidget,
parameterNodeWrapper and util, on a real vtkMRMLScene. The widgets are the named stand-ins of qt_standins; the
buttons are clicked, fields typed into, and the result read back from the scene.
"""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest

from lesionseg.mrml import segmentation_node_from_labelmap, volume_node_from_image

SEGMENTATION_MODULES = ("SpleenSeg", "ProstateMetSeg")


def _segmentation(scene, image, name, box, segment="Spleen"):
    labels = np.zeros(image.array.shape, np.uint8)
    labels[box] = 1
    return segmentation_node_from_labelmap(scene, image.with_array(labels), name, {1: segment}, None)


@pytest.mark.parametrize("module", SEGMENTATION_MODULES)
def test_opening_the_panel_preselects_the_ct_not_a_labelmap_added_before_it(framework, module, ct_image):
    scene = framework.slicer.mrmlScene
    volume_node_from_image(scene, ct_image.with_array((ct_image.array > 0).astype(np.uint8)), "Mask", labelmap=True)
    ct = volume_node_from_image(scene, ct_image, "Abdomen CT")

    widget = framework.enter(module)

    assert widget._parameterNode.inputVolume is ct
    assert widget.ui.inputVolumeSelector.currentNode() is ct
    assert widget.ui.inputInfoLabel.text == widget.logic.describeVolume(ct)
    assert "12×10×6" in widget.ui.inputInfoLabel.text


@pytest.mark.parametrize("module", SEGMENTATION_MODULES)
def test_action_buttons_follow_the_parameter_node_with_tooltips_that_say_why(framework, module, ct_image):
    scene = framework.slicer.mrmlScene
    ct = volume_node_from_image(scene, ct_image, "Abdomen CT")
    widget = framework.enter(module)
    ui, node = widget.ui, widget._parameterNode
    assert not ui.compareButton.enabled and "reference" in ui.compareButton.toolTip
    assert not ui.exportButton.enabled and ui.exportButton.toolTip == "Select the segmentation to export."

    ai = _segmentation(scene, ct_image, "AI", np.s_[2:4, 3:7, 4:9])
    corrected = _segmentation(scene, ct_image, "Corrected", np.s_[2:4, 3:7, 4:8])
    node.outputSegmentation = ai
    assert ui.outputSegmentationSelector.currentNode() is ai
    assert ui.exportButton.enabled and ui.exportButton.toolTip == "Export the output segmentation as RTSTRUCT."
    assert not ui.compareButton.enabled
    ui.referenceSegmentationSelector.setCurrentNode(corrected)  # the user picks the reference
    assert node.referenceSegmentation is corrected
    assert ui.compareButton.enabled, ui.compareButton.toolTip
    ui.referenceSegmentationSelector.setCurrentNode(ai)
    assert not ui.compareButton.enabled and "different segmentation" in ui.compareButton.toolTip

    # A labelmap is no input for the models: the selector cannot show it, and Segment says why it waits.
    mask = volume_node_from_image(scene, ct_image.with_array(np.ones(ct_image.array.shape, np.uint8)), "M", True)
    node.inputVolume = mask
    assert ui.inputVolumeSelector.currentNode() is None
    assert not ui.segmentButton.enabled and "labelmap" in ui.segmentButton.toolTip
    node.inputVolume = ct
    assert ui.inputVolumeSelector.currentNode() is ct
    assert (ui.segmentButton.enabled, ui.segmentButton.toolTip) == widget.segmentPanel.readiness()
    if module == "ProstateMetSeg":
        assert ui.lesionTableButton.enabled, ui.lesionTableButton.toolTip


@pytest.mark.parametrize("module", SEGMENTATION_MODULES)
def test_compare_fills_the_metrics_table_and_save_csv_writes_it(framework, module, ct_image, tmp_path):
    scene = framework.slicer.mrmlScene
    ct = volume_node_from_image(scene, ct_image, "Abdomen CT")
    ai = _segmentation(scene, ct_image, "AI", np.s_[2:4, 3:7, 4:9])
    corrected = _segmentation(scene, ct_image, "Corrected", np.s_[2:4, 3:7, 4:8])
    widget = framework.enter(module)
    ui, node = widget.ui, widget._parameterNode
    node.inputVolume = ct
    ui.outputSegmentationSelector.setCurrentNode(ai)
    ui.referenceSegmentationSelector.setCurrentNode(corrected)
    assert widget.comparisonPanel.mappingEditor.mapping() == {"Spleen": "Spleen"}
    assert not ui.saveComparisonCsvButton.enabled

    ui.compareButton.click()

    table = node.comparisonTable
    assert table is not None and ui.comparisonTableView.mrmlTableNode() is table
    assert table.GetTable().GetColumnByName("dice").GetValue(0) == pytest.approx(2 * 32 / (40 + 32))
    assert ui.saveComparisonCsvButton.enabled
    qt = __import__("qt")
    qt.QFileDialog.answer = str(tmp_path / "comparison")
    try:
        ui.saveComparisonCsvButton.click()
    finally:
        qt.QFileDialog.answer = None
    with open(tmp_path / "comparison.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert float(rows[0]["dice"]) == pytest.approx(2 * 32 / (40 + 32))


def test_lesion_table_lists_the_lesions_and_a_click_centres_the_views(framework, ct_image):
    slicer = framework.slicer
    scene = slicer.mrmlScene
    ct = volume_node_from_image(scene, ct_image, "Pelvis CT")
    labels = np.zeros(ct_image.array.shape, np.uint8)
    labels[1:5, 1:5, 1:5] = 1  # 64 voxels of 1.6 mm³: 102.4 mm³
    labels[5, 8, 10] = 1  # one voxel: under the 100 mm³ minimum
    metastases = segmentation_node_from_labelmap(scene, ct_image.with_array(labels), "AI", {1: "Lesion"}, ct)
    red = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    red.SetLayoutName("Red")
    widget = framework.enter("ProstateMetSeg")
    ui, node = widget.ui, widget._parameterNode
    node.inputVolume = ct
    node.outputSegmentation = metastases
    assert ui.lesionTableButton.enabled, ui.lesionTableButton.toolTip

    ui.lesionTableButton.click()

    assert node.lesionTable is not None and ui.lesionTableView.mrmlTableNode() is node.lesionTable
    assert node.lesionTable.GetNumberOfRows() == 1
    assert ui.lesionCountLabel.text.startswith("1 lesion") and "100" in ui.lesionCountLabel.text
    ui.lesionTableView.clicked.emit(ui.lesionTableView.selectRow(0))
    # The red view now looks at the lesion's centre, as the table gives it.
    table = node.lesionTable.GetTable()
    centre = [float(table.GetColumnByName(f"centroid_{axis}").GetValue(0)) for axis in "ras"]
    np.testing.assert_allclose([red.GetSliceToRAS().GetElement(i, 3) for i in range(3)], centre, atol=1e-6)


def test_training_panel_binds_the_dataset_folder_by_hand_and_readies_save_case(framework, ct_image, tmp_path):
    scene = framework.slicer.mrmlScene
    ct = volume_node_from_image(scene, ct_image, "Case CT")
    spleen = _segmentation(scene, ct_image, "Checked spleen", np.s_[2:4, 3:7, 4:9])
    widget = framework.enter("LesionSegTraining")
    ui, node = widget.ui, widget._parameterNode
    assert node.caseVolume is ct and ui.caseVolumeSelector.currentNode() is ct
    assert ui.configPresetComboBox.count > 0 and node.configPreset == ui.configPresetComboBox.currentText
    assert not ui.saveCaseButton.enabled and ui.saveCaseButton.toolTip == "Choose a dataset folder."

    ui.datasetFolderPathLineEdit.currentPath = str(tmp_path / "dataset")
    assert node.datasetFolder == str(tmp_path / "dataset")
    assert "No dataset here yet" in ui.datasetInfoLabel.text
    ui.caseSegmentationSelector.setCurrentNode(spleen)
    assert node.caseSegmentation is spleen
    assert "segments: Spleen" in ui.caseInfoLabel.text
    assert not ui.saveCaseButton.enabled and "annotator" in ui.saveCaseButton.toolTip
    ui.annotatorLineEdit.text = "Dr. A. Example"
    assert node.annotator == "Dr. A. Example"
    assert ui.saveCaseButton.enabled, ui.saveCaseButton.toolTip

    # Emptying the field reaches the parameter node too (CTK signals only non-empty paths).
    ui.datasetFolderPathLineEdit.currentPath = ""
    assert node.datasetFolder == ""
    assert not ui.saveCaseButton.enabled
    # ...and a folder set in the parameter node (e.g. by a scene) shows in the field.
    node.datasetFolder = str(tmp_path / "other")
    assert ui.datasetFolderPathLineEdit.currentPath == str(tmp_path / "other")


@pytest.mark.parametrize("module", ("SpleenSeg", "ProstateMetSeg", "LesionSegTraining"))
def test_after_closing_the_scene_the_open_panel_is_bound_again_and_follows_the_user(framework, module, ct_image):
    scene = framework.slicer.mrmlScene
    widget = framework.enter(module)
    ui = widget.ui
    volume_selector = next(w for w in vars(ui).values() if w.property("SlicerParameterName") == widget.volumeField)
    widget._parameterNode.device = "cpu"

    scene.Clear(False)  # File > Close scene: StartCloseEvent, then EndCloseEvent

    node = widget._parameterNode
    assert node is not None and widget._parameterNodeGuiTag is not None
    assert node.device == "auto" and ui.deviceComboBox.currentText == "auto"
    ct = volume_node_from_image(scene, ct_image, "Next CT")
    volume_selector.setCurrentNode(ct)
    assert getattr(node, widget.volumeField) is ct

    framework.exit(module)
    assert widget._parameterNodeGuiTag is None
    ui.deviceComboBox.currentIndex = ui.deviceComboBox.findText("cpu")
    assert node.device == "auto", "an exited panel still writes to the parameter node"


def test_reviewing_lesions_in_prostatemetseg_with_buttons_and_keys(framework, ct_image, tmp_path):
    """Two metastases: the reviewer steps to each, rejects one (it leaves the segmentation), undoes that, accepts
    one with its key, and exports accepted lesions only."""
    from lesionseg.io.segnrrd import read_seg_nrrd
    from lesionseg.mrml import labelmap_from_segmentation_node

    scene = framework.slicer.mrmlScene
    ct = volume_node_from_image(scene, ct_image, "Pelvis CT")
    labels = np.zeros(ct_image.array.shape, np.uint8)
    labels[1:3, 1:3, 1:3] = 1  # 8 voxels
    labels[3:6, 5:9, 6:11] = 1  # 60 voxels
    result = segmentation_node_from_labelmap(scene, ct_image.with_array(labels), "AI", {1: "metastasis"}, ct)
    widget = framework.enter("ProstateMetSeg")
    ui, node = widget.ui, widget._parameterNode
    node.minLesionVolumeMm3 = 0
    assert not ui.startReviewButton.enabled
    node.outputSegmentation = result
    assert ui.startReviewButton.enabled, ui.startReviewButton.toolTip
    ui.startReviewButton.click()
    assert ui.reviewStatusLabel.text.startswith("Lesion 1 of 2") and "0 accepted, 0 rejected, 2 to review" in (
        ui.reviewStatusLabel.text
    )
    assert not ui.acceptLesionButton.enabled and "reviewer" in ui.acceptLesionButton.toolTip
    ui.reviewerLineEdit.text = "Dr. Review"
    assert node.reviewer == "Dr. Review" and ui.rejectLesionButton.enabled, ui.rejectLesionButton.toolTip

    first = widget.reviewPanel.current
    ui.rejectLesionButton.click()
    after, _ = labelmap_from_segmentation_node(result, ct)
    assert int(after.array.sum()) == 68 - first.voxels and "1 rejected" in ui.reviewStatusLabel.text
    assert ui.undoReviewButton.enabled
    keys = {shortcut.key.toString(): shortcut for shortcut in widget.reviewPanel.shortcuts}
    assert set(keys) == {"P", "N", "A", "R", "U"}
    assert all(s.context() == sys.modules["qt"].Qt.WidgetWithChildrenShortcut for s in keys.values())
    keys["U"].activate()  # the U key: the rejected lesion comes back voxel for voxel
    back, _ = labelmap_from_segmentation_node(result, ct)
    assert np.array_equal(back.array, labels) and widget.reviewPanel.current.id == first.id
    keys["A"].activate()  # accept it with its key; the panel moves on to the other lesion
    assert "1 accepted" in ui.reviewStatusLabel.text and widget.reviewPanel.current.id != first.id

    # Export the accepted lesion only: the other (unreviewed) one stays out of the file.
    node.exportFormat = "NRRD"
    ui.exportAcceptedOnlyCheckBox.setChecked(True)
    assert node.exportAcceptedOnly is True
    ui.exportFolderPathLineEdit.currentPath = str(tmp_path)
    ui.exportButton.click()
    exported, _ = read_seg_nrrd(next(tmp_path.glob("*.seg.nrrd")))
    assert int((exported.array > 0).sum()) == first.voxels  # the accepted lesion's voxels, and nothing else
    # The lesion report (the table's CSV) likewise lists the accepted lesion only.
    ui.lesionTableButton.click()
    assert len(widget.lesionPanel.rows) == 2
    report = tmp_path / "lesions.csv"
    widget.lesionPanel.writeCsv(str(report))
    with report.open(newline="") as stream:
        listed = list(csv.DictReader(stream))
    assert len(listed) == 1 and listed[0]["status"] == "accepted"


def test_segment_with_uncertainty_adds_the_overlay_from_the_panel(framework, tmp_path):
    """The user ticks Uncertainty and segments: the entropy comes back as a volume over the CT in the slice views,
    and the result carries each lesion's confidence."""
    import os
    import time

    from support.tiny_models import phantom_ct

    from LesionSegLib.selftest import write_threshold_model

    scene = framework.slicer.mrmlScene
    for view in ("Red", "Yellow", "Green"):  # what the app's layout makes: one composite node a slice view
        composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        composite.SetLayoutName(view)
    ct = volume_node_from_image(scene, phantom_ct(), "Pelvis CT")
    write_threshold_model(tmp_path / "models", "tiny-mets", "metastasis")
    widget = framework.enter("ProstateMetSeg")
    ui, node, panel = widget.ui, widget._parameterNode, widget.segmentPanel
    widget.logic.modelsDir, widget.logic.pythonExecutable = tmp_path / "models", sys.executable
    widget.logic.workRoot, widget.logic.childEnvironment = tmp_path, dict(os.environ)
    panel.refreshModels()
    ui.modelComboBox.currentIndex = [entry.spec.id for entry in panel.entries].index("tiny-mets")
    assert node.inputVolume is ct
    ui.uncertaintyCheckBox.setChecked(True)
    assert ui.segmentButton.enabled, ui.segmentButton.toolTip
    ui.segmentButton.click()
    deadline = time.monotonic() + 300
    while panel.run is not None and time.monotonic() < deadline:
        panel.onTimer()
        time.sleep(0.05)
    result = node.outputSegmentation
    assert result is not None and result.GetAttribute("LesionSeg.UncertaintyLesions") is not None
    entropy = result.GetNodeReference("LesionSeg.UncertaintyEntropy")
    assert entropy is not None and "uncertainty (entropy)" in entropy.GetName()
    composites = [scene.GetNthNodeByClass(n, "vtkMRMLSliceCompositeNode")
                  for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]  # fmt: skip
    assert len(composites) == 3 and all(c.GetForegroundVolumeID() == entropy.GetID() for c in composites)
    widget.logic.shutdownWorker()
