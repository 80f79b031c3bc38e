"""Exporting into Slicer's DICOM database, with Slicer's own DICOMLib (per release).

DICOMLib.DICOMUtils is Slicer's released file; the database and the indexer under it (ctkDICOMDatabase,
ctkDICOMIndexer) are compiled CTK classes, here the small stand-ins of qt_standins that read headers with
pydicom and follow CTK's API (``addDirectory`` walks a folder, ``addListOfFiles`` takes the files given).
"""

from __future__ import annotations

import importlib
import shutil

import numpy as np
import pydicom
import pytest

from lesionseg.dicom import read_dicom_volume, write_ct_series
from lesionseg.mrml import segmentation_node_from_labelmap, volume_node_from_image


@pytest.fixture
def dicom_ct(framework, ct_image, tmp_path):
    """A CT series imported with Slicer's DICOMUtils.importDicom and loaded as Slicer's DICOM module leaves it."""
    slicer = framework.slicer
    ctk = importlib.import_module("ctk")
    dicom_utils = importlib.import_module("DICOMLib.DICOMUtils")
    files = write_ct_series(ct_image, tmp_path / "incoming" / "ct", uid_seed="slicer-framework-export")
    slicer.dicomDatabase = ctk.ctkDICOMDatabase()
    assert dicom_utils.importDicom(str(tmp_path / "incoming"), slicer.dicomDatabase)
    assert slicer.dicomDatabase.allFiles() == sorted(str(f) for f in files)

    image = read_dicom_volume(tmp_path / "incoming" / "ct")
    volume = volume_node_from_image(slicer.mrmlScene, image, "CT from DICOM")
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    volume.SetAttribute("DICOM.instanceUIDs", " ".join(uids))
    labels = np.zeros(image.array.shape, np.uint8)
    labels[2:4, 3:7, 4:9] = 1
    segmentation = segmentation_node_from_labelmap(
        slicer.mrmlScene, image.with_array(labels), "AI result", {1: "Spleen"}, volume
    )
    return volume, segmentation, files


def test_exporting_rtstruct_into_the_database_adds_only_the_file_it_wrote(framework, dicom_ct, tmp_path):
    """The user exports into a busy folder (their Desktop): only the new RTSTRUCT may enter the database."""
    slicer = framework.slicer
    volume, segmentation, ct_files = dicom_ct
    desktop = tmp_path / "Desktop"
    (desktop / "old study").mkdir(parents=True)
    stray = shutil.copy(ct_files[0], desktop / "old study" / "someone else.dcm")
    dicomapp = importlib.import_module("LesionSegLib.dicomapp")
    assert dicomapp.file_for_instance_lookup() == slicer.dicomDatabase.fileForInstance

    widget = framework.enter("SpleenSeg")
    ui, node = widget.ui, widget._parameterNode
    node.inputVolume = volume
    node.outputSegmentation = segmentation
    node.exportFormat = "RTSTRUCT"
    ui.exportDestinationComboBox.currentIndex = ui.exportDestinationComboBox.findText("DICOM database")
    ui.exportFolderPathLineEdit.currentPath = str(desktop)
    assert "on the CT's DICOM series" in ui.exportStatusLabel.text, ui.exportStatusLabel.text
    assert ui.exportButton.enabled, ui.exportButton.toolTip

    ui.exportButton.click()

    assert ui.exportStatusLabel.text.startswith("Exported: "), ui.exportStatusLabel.text
    written = [p for p in desktop.iterdir() if p.is_file()]
    assert len(written) == 1 and pydicom.dcmread(written[0]).Modality == "RTSTRUCT"
    assert f"Wrote {written[0]}" in ui.logTextEdit.toPlainText()
    in_database = slicer.dicomDatabase.allFiles()
    assert in_database == sorted([str(written[0])] + [str(f) for f in ct_files])
    assert str(stray) not in in_database
    # What the panel did before: DICOMUtils.importDicom on the folder indexes everything under it.
    folder_import = importlib.import_module("ctk").ctkDICOMDatabase()
    importlib.import_module("DICOMLib.DICOMUtils").importDicom(str(desktop), folder_import, copyFiles=True)
    assert str(stray) in folder_import.allFiles()


def test_import_helper_names_the_files_the_database_did_not_take(framework, tmp_path):
    ctk = importlib.import_module("ctk")
    dicomapp = importlib.import_module("LesionSegLib.dicomapp")
    not_dicom = tmp_path / "notes.dcm"
    not_dicom.write_text("not a DICOM file")
    with pytest.raises(RuntimeError, match=r"did not take notes\.dcm"):
        dicomapp.import_files_into_dicom_database([not_dicom], ctk.ctkDICOMDatabase())


def test_without_slicerrt_or_a_database_the_plan_says_what_is_missing(framework, dicom_ct):
    slicer = framework.slicer
    volume, segmentation, _files = dicom_ct
    dicomapp = importlib.import_module("LesionSegLib.dicomapp")
    assert not dicomapp.slicerrt_available()
    logic = framework.load_module("SpleenSeg").SpleenSegLogic()
    assert logic.planExport(volume, segmentation, "RTSTRUCT").possible

    slicer.dicomDatabase.isOpen = False
    plan = logic.planExport(volume, segmentation, "RTSTRUCT")
    assert not plan.possible and "no DICOM database" in plan.problem
