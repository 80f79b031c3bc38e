"""DICOM export keeps the patient: which writer a CT gets, what the written RTSTRUCT says about the patient and
study, the tags SlicerRT's exportables get from subject hierarchy, and which files go into the DICOM database.

All on a real slicer-core scene with real DICOM files written by the project's writer and judged by
``dciodvfy``. SlicerRT's plugin and Slicer's DICOM database exist only in the app (see
Testing/run_slicer_selftests.sh); the parts of that route that compute tags and choose files run here.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from support.processes import python_without

from lesionseg.dicom import read_dicom_volume, write_ct_series
from lesionseg.image import Image
from lesionseg.mrml import segmentation_node_from_labelmap, volume_node_from_image

slicer = pytest.importorskip("slicer")

from LesionSegLib import export  # noqa: E402
from LesionSegLib.results import SegmentationResultsLogic  # noqa: E402

# Nothing here is the writer's default, so a copied value cannot pass by coincidence.
PATIENT = {
    "PatientName": "Okafor^Adaeze^N",
    "PatientID": "MRN-448812",
    "PatientBirthDate": "19580317",
    "PatientSex": "F",
}
STUDY_UID = "1.2.826.0.1.3680043.8.498.4711.1"
FRAME_UID = "1.2.826.0.1.3680043.8.498.4711.2"
ACCESSION = "ACC20260412"
IDENTITY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "AccessionNumber")


def a_ct() -> Image:
    values = np.random.default_rng(3).normal(40, 10, (10, 20, 24)).round().astype(np.int16)
    return Image(values, (0.8, 0.9, 2.5), (-40.0, 25.0, -90.0), np.diag([-1.0, 1.0, -1.0]))


@pytest.fixture
def patient_ct(scene, tmp_path):
    """A real patient's CT series (non-default identity), loaded as Slicer's DICOM module leaves it, and a
    segmentation drawn on it."""
    files = write_ct_series(
        a_ct(),
        tmp_path / "ct",
        patient_id=PATIENT["PatientID"],
        patient_name=PATIENT["PatientName"],
        study_uid=STUDY_UID,
        frame_of_reference_uid=FRAME_UID,
        uid_seed="keep-the-patient",
        extra={
            "PatientBirthDate": PATIENT["PatientBirthDate"],
            "PatientSex": PATIENT["PatientSex"],
            "AccessionNumber": ACCESSION,
        },
    )
    read_back = read_dicom_volume(tmp_path / "ct")
    volume = volume_node_from_image(scene, read_back, "CT from DICOM")
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]
    volume.SetAttribute("DICOM.instanceUIDs", " ".join(uids))
    labels = np.zeros(read_back.array.shape, np.uint8)
    labels[3:8, 5:14, 6:16] = 1
    segmentation = segmentation_node_from_labelmap(
        scene, read_back.with_array(labels), "AI result", {1: "Bone metastasis of the sacrum"}, volume
    )
    database = {uid: str(path) for uid, path in zip(uids, files, strict=True)}
    return volume, segmentation, database, files


@pytest.mark.parametrize("slicerrt_installed", [False, True], ids=["without-slicerrt", "with-slicerrt"])
def test_exporting_rtstruct_of_a_ct_from_dicom_keeps_its_patient_study_and_frame_of_reference(
    scene, patient_ct, tmp_path, slicerrt_installed
):
    volume, segmentation, database, files = patient_ct
    logic = SegmentationResultsLogic()
    plan = logic.planExport(volume, segmentation, export.RTSTRUCT, slicerrt_installed, database.get)
    assert plan.route == export.ROUTE_ENGINE_RTSTRUCT  # SlicerRT would write a new CT series and a new patient

    written = logic.exportSegmentation(plan, volume, segmentation, tmp_path / "out", False, say=lambda _m: None)
    assert len(written) == 1
    rtstruct = pydicom.dcmread(written[0])
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    for keyword in IDENTITY:
        assert str(rtstruct.get(keyword, "")) == str(source.get(keyword)), keyword
    assert (str(rtstruct.PatientName), rtstruct.PatientSex, rtstruct.AccessionNumber) == (
        PATIENT["PatientName"],
        "F",
        ACCESSION,
    )
    assert rtstruct.FrameOfReferenceUID == source.FrameOfReferenceUID == FRAME_UID
    assert rtstruct.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == FRAME_UID
    # It references the original slices, and writes no CT of its own.
    series = rtstruct.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    referenced = {item.ReferencedSOPInstanceUID for item in series.ContourImageSequence}
    assert referenced == set(database)

    assert shutil.which("dciodvfy"), "dciodvfy (Debian package dicom3tools) is needed to judge the RTSTRUCT"
    check = subprocess.run(["dciodvfy", str(written[0])], capture_output=True, text=True, timeout=60)
    errors = [line for line in check.stderr.splitlines() if line.startswith("Error")]
    assert not errors, check.stderr


def test_a_ct_without_dicom_series_exports_rtstruct_only_through_slicerrt(scene):
    values = np.zeros((6, 12, 12), np.int16)
    image = Image(values, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    volume = volume_node_from_image(scene, image, "Resampled CT")
    labels = np.zeros(values.shape, np.uint8)
    labels[2:4, 3:8, 3:8] = 1
    segmentation = segmentation_node_from_labelmap(scene, image.with_array(labels), "Seg", {1: "Lesion"}, volume)

    plan = export.plan_export(volume, segmentation, export.RTSTRUCT, True, {}.get)
    assert plan.possible and plan.route == export.ROUTE_SLICERRT and plan.reference_files == []
    without = export.plan_export(volume, segmentation, export.RTSTRUCT, False, {}.get)
    assert not without.possible and "install SlicerRT" in without.problem and "new DICOM series" in without.problem
    # DICOM SEG has no such writer: SlicerRT writes no SEG.
    seg = export.plan_export(volume, segmentation, export.DICOM_SEG, True, {}.get, dicomseg_problem="")
    assert not seg.possible and "SlicerRT" not in seg.problem


def subject_hierarchy(scene):
    return slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)


def test_slicerrt_exportables_get_the_patient_and_study_of_the_subject_hierarchy(scene):
    """A CT with no DICOM series placed under a patient and study (as the DICOM module or the Data module
    leaves them): every patient and study tag SlicerRT reads comes from there."""
    hierarchy = subject_hierarchy(scene)
    prefix = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMAttributePrefix()
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Okafor")
    for name, value in {**PATIENT, "PatientComments": "re-staging", "OtherPatientIDs": "H-77"}.items():
        hierarchy.SetItemAttribute(patient, prefix + name, value)
    study = hierarchy.CreateStudyItem(patient, "CT pelvis")
    # The DICOM module sets a loaded study's UID as the item's DICOM UID, not as an attribute.
    hierarchy.SetItemUID(study, "DICOM", STUDY_UID)
    for name, value in {"StudyDate": "20260412", "StudyTime": "101500", "StudyDescription": "CT pelvis"}.items():
        hierarchy.SetItemAttribute(study, prefix + name, value)
    image = a_ct()
    volume = volume_node_from_image(scene, image, "Resampled CT")
    hierarchy.SetItemParent(hierarchy.CreateItem(study, volume), study)
    segmentation = segmentation_node_from_labelmap(
        scene, image.with_array((image.array > 45).astype(np.uint8)), "Seg", {1: "A very long lesion name"}, volume
    )

    copy, volume_item, copy_item = export.prepare_slicerrt_export(scene, volume, segmentation)
    assert hierarchy.GetItemParent(volume_item) == study and hierarchy.GetItemParent(copy_item) == study
    expected = {
        **PATIENT,
        "PatientComments": "re-staging",
        "OtherPatientIDs": "H-77",
        "StudyInstanceUID": STUDY_UID,
        "StudyID": "",
        "StudyDescription": "CT pelvis",
        "StudyDate": "20260412",
        "StudyTime": "101500",
    }
    assert export.dicom_export_tags(scene, volume_item) == expected
    assert export.dicom_export_tags(scene, copy_item) == expected
    assert copy.GetSegmentation().GetNthSegment(0).GetName() == "A very long lesi"


def test_a_ct_with_no_patient_gets_the_default_patient_and_study_of_slicers_export_dialog(scene):
    volume = volume_node_from_image(scene, a_ct(), "Resampled CT")
    segmentation = segmentation_node_from_labelmap(
        scene, a_ct().with_array(np.ones((10, 20, 24), np.uint8)), "Seg", {1: "Lesion"}, volume
    )
    _copy, volume_item, copy_item = export.prepare_slicerrt_export(scene, volume, segmentation)
    hierarchy = subject_hierarchy(scene)
    study = hierarchy.GetItemParent(volume_item)
    assert hierarchy.GetItemLevel(study) == "Study" and hierarchy.GetItemLevel(hierarchy.GetItemParent(study)) == (
        "Patient"
    )
    tags = export.dicom_export_tags(scene, volume_item)
    assert tags["PatientName"] == "Anonymous" and re.fullmatch(r"[A-Z]{6}", tags["PatientID"])
    assert re.fullmatch(r"[0-9]+(\.[0-9]+)+", tags["StudyInstanceUID"]) and len(tags["StudyInstanceUID"]) <= 64
    assert hierarchy.GetItemUID(study, "DICOM") == tags["StudyInstanceUID"]  # where SlicerRT reads it
    assert re.fullmatch(r"\d{8}", tags["StudyDate"]) and re.fullmatch(r"\d{6}", tags["StudyTime"])
    assert tags["PatientSex"] == "" and tags["PatientBirthDate"] == ""
    assert export.dicom_export_tags(scene, copy_item) == tags

    # A second export keeps the same patient and study instead of inventing new ones.
    _copy2, volume_item2, _copy_item2 = export.prepare_slicerrt_export(scene, volume, segmentation)
    assert volume_item2 == volume_item and export.dicom_export_tags(scene, volume_item2) == tags


def test_a_study_with_no_patient_gets_a_patient_and_keeps_its_own_tags(scene):
    hierarchy = subject_hierarchy(scene)
    study = hierarchy.CreateStudyItem(hierarchy.GetSceneItemID(), "Study")
    hierarchy.SetItemAttribute(study, "DICOM.StudyDate", "20250102")
    volume = volume_node_from_image(scene, a_ct(), "CT")
    hierarchy.CreateItem(study, volume)
    segmentation = segmentation_node_from_labelmap(
        scene, a_ct().with_array(np.ones((10, 20, 24), np.uint8)), "Seg", {1: "Lesion"}, volume
    )
    _copy, volume_item, _copy_item = export.prepare_slicerrt_export(scene, volume, segmentation)
    assert hierarchy.GetItemParent(volume_item) == study
    tags = export.dicom_export_tags(scene, volume_item)
    assert tags["StudyDate"] == "20250102" and tags["PatientName"] == "Anonymous"


def test_tags_of_an_item_outside_a_patient_and_study_name_the_fix(scene):
    volume = volume_node_from_image(scene, a_ct(), "Loose CT")
    hierarchy = subject_hierarchy(scene)
    item = hierarchy.CreateItem(hierarchy.GetSceneItemID(), volume)
    with pytest.raises(ValueError, match="'Loose CT' is not under a study under a patient.*Data module"):
        export.dicom_export_tags(scene, item)


def test_segments_install_offers_highdicom_for_dicom_seg_where_it_can_run():
    """Slicer 5.10 ships no highdicom, so its DICOM SEG export is refused; Segment's install brings it along
    (on a Python highdicom supports), and a Python that has it is offered nothing more."""
    script = (
        "from LesionSegLib import export, segmenting\n"
        "print(segmenting.missing_export_requirements())\n"
        "print(segmenting.missing_export_requirements((3, 9)))\n"
        "print(bool(export.dicomseg_packages_problem()))\n"
    )
    printed = python_without(("highdicom",), script)  # absent, as in Slicer 5.10
    assert printed.splitlines() == ["[('highdicom', 'highdicom>=0.23')]", "[]", "True"]
    from LesionSegLib import segmenting

    assert segmenting.missing_export_requirements() == []  # highdicom is installed here
    assert all(name != "highdicom" for name, _ in segmenting.REQUIREMENTS)  # segmenting itself never waits for it


def test_segments_install_offers_openvino_for_the_cpu_and_never_waits_for_it():
    """OpenVINO speeds the CPU network; the install offers it with the required packages, and Segment does not
    require it (the job falls back to torch)."""
    script = "from LesionSegLib import segmenting\nprint(segmenting.missing_speed_requirements())\n"
    printed = python_without(("openvino",), script)  # absent, as in a fresh Slicer
    assert printed.splitlines() == ["[('openvino', 'openvino>=2025.0')]"]
    from LesionSegLib import segmenting

    assert segmenting.missing_speed_requirements() == []  # openvino is installed here
    assert all(name != "openvino" for name, _ in segmenting.REQUIREMENTS)


def test_exporting_into_the_dicom_database_imports_only_the_files_the_export_wrote(scene, patient_ct, tmp_path):
    """The export folder may be a Desktop full of other files; Slicer's indexer walks a folder recursively, so
    the database import is given the written files, never the folder."""
    from LesionSegLib import dicomapp

    volume, segmentation, database, _files = patient_ct
    desktop = tmp_path / "Desktop"
    others = write_ct_series(a_ct(), desktop / "another patient", patient_id="OTHER", uid_seed="other-patient")
    (desktop / "notes.txt").write_text("not DICOM", encoding="utf-8")
    plan = export.plan_export(volume, segmentation, export.RTSTRUCT, True, database.get)
    imported: list[list] = []  # stands in for Slicer's DICOM database, which exists only in the app

    def record(files) -> None:
        imported.append([str(path) for path in files])

    written = dicomapp.run_export(plan, scene, volume, segmentation, desktop, True, lambda _m: None, record)
    assert imported == [[str(written[0])]]
    assert pydicom.dcmread(written[0], stop_before_pixels=True).Modality == "RTSTRUCT"
    assert all(str(path) not in imported[0] for path in others)

    imported.clear()
    nrrd = export.plan_export(volume, segmentation, export.SEG_NRRD, True, database.get)
    dicomapp.run_export(nrrd, scene, volume, segmentation, desktop, True, lambda _m: None, record)
    assert imported == []  # a .seg.nrrd is no DICOM
