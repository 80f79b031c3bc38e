"""LesionSegLib's Qt-free logic on a real slicer-core scene: comparing with a reference, the lesion table,
jumping the slice views, and choosing and running an export."""

from __future__ import annotations

import csv
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from support.processes import python_without

from lesionseg.dicom import read_dicom_volume, write_ct_series
from lesionseg.image import Image
from lesionseg.metrics import dice_coefficient, lesion_table
from lesionseg.mrml import (
    labelmap_from_segmentation_node,
    segmentation_node_from_labelmap,
    volume_node_from_image,
)

slicer = pytest.importorskip("slicer")

from LesionSegLib import comparison, export, lesions, tables  # noqa: E402
from LesionSegLib.results import SegmentationResultsLogic  # noqa: E402


def flipped_ct() -> Image:
    """A CT on a flipped, anisotropic grid with a noisy soft-tissue background."""
    values = np.random.default_rng(7).normal(40, 12, (12, 22, 26)).round().astype(np.int16)
    return Image(values, (0.8, 0.9, 2.5), (14.0, -6.0, 31.0), np.diag([-1.0, 1.0, -1.0]))


def boxes(shape, *placed) -> np.ndarray:
    array = np.zeros(shape, np.uint8)
    for value, (k, j, i) in placed:
        array[k, j, i] = value
    return array


@pytest.fixture
def ct_and_pair(scene):
    ct = flipped_ct()
    volume = volume_node_from_image(scene, ct, "CT")
    ai = boxes(
        ct.array.shape,
        (1, (slice(2, 7), slice(4, 12), slice(5, 13))),
        (2, (slice(8, 11), slice(14, 18), slice(15, 21))),
    )
    ref = boxes(
        ct.array.shape,
        (1, (slice(3, 8), slice(4, 13), slice(5, 13))),
        (2, (slice(8, 11), slice(14, 17), slice(15, 21))),
    )
    ai_node = segmentation_node_from_labelmap(scene, ct.with_array(ai), "AI", {1: "Spleen", 2: "Lesion"}, volume)
    ref_node = segmentation_node_from_labelmap(
        scene, ct.with_array(ref), "Corrected", {1: "spleen ", 2: "Lesion"}, volume
    )
    return ct, volume, ai, ref, ai_node, ref_node


def test_comparing_with_a_corrected_segmentation_pairs_segments_by_name_and_matches_the_engine(
    scene, ct_and_pair, tmp_path
):
    ct, volume, ai, ref, ai_node, ref_node = ct_and_pair
    node, rows = SegmentationResultsLogic().compareWithReference(ai_node, ref_node, csvPath=tmp_path / "cmp.csv")

    assert [(r["segment"], r["reference_segment"]) for r in rows] == [("Spleen", "spleen "), ("Lesion", "Lesion")]
    for row, value in zip(rows, (1, 2), strict=True):
        assert row["dice"] == pytest.approx(dice_coefficient(ai == value, ref == value), abs=1e-12)
        assert row["volume_ref_ml"] == pytest.approx((ref == value).sum() * ct.voxel_volume_mm3 / 1000)
    assert node.IsA("vtkMRMLTableNode") and node.GetScene() is scene
    assert node.GetAttribute(tables.TABLE_KIND_ATTRIBUTE) == comparison.TABLE_KIND
    assert node.GetNumberOfRows() == 2 and node.GetColumnUnitLabel("hd95_mm") == "mm"
    shown = tables.table_rows(node)
    assert shown[0]["dice"] == pytest.approx(rows[0]["dice"]) and shown[1]["reference_segment"] == "Lesion"
    with open(tmp_path / "cmp.csv", newline="") as handle:
        written = list(csv.DictReader(handle))
    assert float(written[1]["dice"]) == pytest.approx(rows[1]["dice"])
    # The user's segmentations are inputs only.
    assert ai_node.GetSegmentation().GetNumberOfSegments() == 2 and ref_node.GetName() == "Corrected"


def test_a_hand_edited_mapping_compares_only_the_chosen_pairs_and_refills_the_same_table(scene, ct_and_pair):
    ct, volume, ai, ref, ai_node, ref_node = ct_and_pair
    logic = SegmentationResultsLogic()
    node, _ = logic.compareWithReference(ai_node, ref_node)
    again, rows = logic.compareWithReference(ai_node, ref_node, {"Lesion": "spleen "}, volume, node)
    assert again is node and node.GetNumberOfRows() == 1
    assert rows[0]["dice"] == pytest.approx(dice_coefficient(ai == 2, ref == 1))


def test_comparison_on_a_coarser_common_grid_matches_the_engine_on_that_grid(scene, ct_and_pair):
    ct, volume, ai, ref, ai_node, ref_node = ct_and_pair
    coarse = Image(np.zeros((6, 11, 13), np.int16), (1.6, 1.8, 5.0), ct.origin, ct.direction)
    rows = comparison.compare_segmentations(ai_node, ref_node, {"Spleen": "spleen "}, coarse)
    predicted, _ = labelmap_from_segmentation_node(ai_node, coarse, {"Spleen": 1})
    truth, _ = labelmap_from_segmentation_node(ref_node, coarse, {"spleen ": 1})
    assert predicted.same_grid(coarse)
    assert rows[0]["dice"] == pytest.approx(dice_coefficient(predicted.array > 0, truth.array > 0))


def test_bad_comparison_requests_say_what_to_fix(scene, ct_and_pair):
    ct, volume, ai, ref, ai_node, ref_node = ct_and_pair
    with pytest.raises(ValueError, match="different segmentation"):
        comparison.compare_segmentations(ai_node, ai_node)
    with pytest.raises(ValueError, match="paired more than once"):
        comparison.compare_segmentations(ai_node, ref_node, {"Spleen": "Lesion", "Lesion": "Lesion"})
    with pytest.raises(ValueError, match="not in the reference"):
        comparison.compare_segmentations(ai_node, ref_node, {"Spleen": "Liver"})
    other = segmentation_node_from_labelmap(scene, ct.with_array(ai), "Other", {1: "Liver", 2: "Kidney"})
    with pytest.raises(ValueError, match="no segment is paired"):
        comparison.compare_segmentations(ai_node, other)
    bare = segmentation_node_from_labelmap(scene, ct.with_array(ref), "Bare", {1: "Spleen"})
    no_geometry = segmentation_node_from_labelmap(scene, ct.with_array(ai), "Loose", {1: "Spleen"})
    with pytest.raises(ValueError, match="choose the input volume"):
        comparison.compare_segmentations(no_geometry, bare)


def test_lesion_table_lists_lesions_over_the_minimum_volume_with_hu_and_jumps_the_views(scene, tmp_path):
    ct = flipped_ct()
    volume = volume_node_from_image(scene, ct, "CT")
    labels = np.zeros(ct.array.shape, np.uint8)
    labels[2:6, 3:9, 4:10] = 1  # 144 voxels = 259 mm³
    labels[8:10, 15:18, 16:19] = 1  # 18 voxels = 32 mm³: under the 100 mm³ floor
    labels[7:11, 12:20, 2:8] = 2  # 192 voxels, another segment
    segmentation = segmentation_node_from_labelmap(
        scene, ct.with_array(labels), "Mets", {1: "Bone metastasis", 2: "Nodal metastasis"}, volume
    )
    node, rows = SegmentationResultsLogic().lesionTable(segmentation, volume, 100, csvPath=tmp_path / "lesions.csv")

    expected = lesion_table(ct.with_array(labels), ct, 100)
    assert [r["segment"] for r in rows] == ["Nodal metastasis", "Bone metastasis"]
    assert len(rows) == len(expected) == 2
    for row, engine in zip(rows, expected, strict=True):
        assert row["volume_ml"] == pytest.approx(engine["volume_ml"])
        assert [row["centroid_r"], row["centroid_a"], row["centroid_s"]] == pytest.approx(engine["centroid_ras_mm"])
        assert row["mean_hu"] == pytest.approx(engine["mean_hu"]) and row["max_hu"] == engine["max_hu"]
    first = ct.array[7:11, 12:20, 2:8]
    assert rows[0]["max_hu"] == first.max() and rows[0]["mean_hu"] == pytest.approx(first.mean())
    assert node.GetNumberOfRows() == 2 and node.GetAttribute(tables.TABLE_KIND_ATTRIBUTE) == lesions.TABLE_KIND
    assert len((tmp_path / "lesions.csv").read_text().splitlines()) == 3
    _, all_rows = SegmentationResultsLogic().lesionTable(segmentation, volume, 0, node)
    assert len(all_rows) == 3 and node.GetNumberOfRows() == 3

    red = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    red.SetLayoutName("Red")
    position = lesions.lesion_position(node, 1)
    lesions.jump_to_lesion(scene, position)
    slice_to_ras = red.GetSliceToRAS()
    assert [slice_to_ras.GetElement(i, 3) for i in range(3)] == pytest.approx(position)
    with pytest.raises(ValueError, match="row 7 does not exist"):
        lesions.lesion_position(node, 7)


def test_minimum_lesion_volume_filters_the_table_says_how_many_it_leaves_out_and_keeps_the_segmentation(scene):
    ct = flipped_ct()
    volume = volume_node_from_image(scene, ct, "CT")
    labels = np.zeros(ct.array.shape, np.uint8)
    labels[2:6, 3:9, 4:10] = 1  # 144 voxels = 259 mm³
    labels[8:10, 15:18, 16:19] = 1  # 18 voxels = 32 mm³
    labels[0:1, 0:2, 0:2] = 2  # 4 voxels = 7 mm³, another segment
    segmentation = segmentation_node_from_labelmap(
        scene, ct.with_array(labels), "Mets", {1: "Bone metastasis", 2: "Nodal metastasis"}, volume
    )
    before, _ = labelmap_from_segmentation_node(segmentation, volume)
    logic = SegmentationResultsLogic()

    node, rows = logic.lesionTable(segmentation, volume, 100)
    assert [r["id"] for r in rows] == [1] and node.GetAttribute(lesions.LEFT_OUT_ATTRIBUTE) == "2"
    assert float(node.GetAttribute(lesions.MINIMUM_ATTRIBUTE)) == 100.0
    assert lesions.listing_summary(len(rows), 2, 100) == (
        "1 lesion of at least 100 mm³ listed; 2 smaller lesions are not listed, and stay in the segmentation."
    )
    # The same table node, listed again at another minimum (what the spin box does), follows it.
    same, rows = logic.lesionTable(segmentation, volume, 10, node)
    assert same is node and node.GetNumberOfRows() == 2 and node.GetAttribute(lesions.LEFT_OUT_ATTRIBUTE) == "1"
    assert [r["id"] for r in rows] == [1, 2]  # numbered again, largest first
    _, rows = logic.lesionTable(segmentation, volume, 0, node)
    assert node.GetNumberOfRows() == 3 and node.GetAttribute(lesions.LEFT_OUT_ATTRIBUTE) == "0"
    assert lesions.listing_summary(3, 0, 0) == "3 lesions of at least 0 mm³ listed."
    # The engine's own filter agrees on what is left out, at the exact boundary too.
    voxel_mm3 = ct.voxel_volume_mm3
    for minimum in (18 * voxel_mm3, 18 * voxel_mm3 + 1e-6):
        listed, left_out = lesions.listed_lesion_rows(segmentation, volume, minimum)
        assert len(listed) == len(lesion_table(ct.with_array(labels), ct, minimum)) and len(listed) + left_out == 3
    # The segmentation itself never lost a voxel.
    after, _ = labelmap_from_segmentation_node(segmentation, volume)
    np.testing.assert_array_equal(after.array, before.array)


def test_lesion_table_refuses_a_negative_minimum_and_a_missing_ct(scene):
    ct = flipped_ct()
    volume = volume_node_from_image(scene, ct, "CT")
    segmentation = segmentation_node_from_labelmap(scene, ct.with_array(boxes(ct.array.shape)), "Empty", {}, volume)
    assert lesions.lesion_rows(segmentation, volume, 100) == []
    with pytest.raises(ValueError, match="0 mm³ or more"):
        lesions.lesion_rows(segmentation, volume, -1)
    with pytest.raises(ValueError, match="choose the CT volume"):
        lesions.lesion_rows(segmentation, None, 100)


@pytest.fixture
def dicom_ct(scene, tmp_path):
    """A CT written as a DICOM series and loaded the way Slicer's DICOM module leaves it (instance UIDs)."""
    image = flipped_ct()
    files = write_ct_series(image, tmp_path / "ct", uid_seed="lesionseglib-export")
    read_back = read_dicom_volume(tmp_path / "ct")
    volume = volume_node_from_image(scene, read_back, "CT from DICOM")
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]
    volume.SetAttribute("DICOM.instanceUIDs", " ".join(uids))
    database = {uid: str(path) for uid, path in zip(uids, files, strict=True)}
    labels = np.zeros(read_back.array.shape, np.uint8)
    labels[3:9, 5:14, 6:15] = 1
    labels[2:5, 15:19, 16:22] = 2
    segmentation = segmentation_node_from_labelmap(
        scene,
        read_back.with_array(labels),
        "AI result",
        {1: "Spleen", 2: "Bone metastasis of the pelvis"},
        volume,
    )
    return volume, segmentation, database, files


def test_rtstruct_of_a_ct_from_dicom_goes_through_the_engine_on_the_ct_files_with_short_roi_names(
    scene, dicom_ct, tmp_path
):
    volume, segmentation, database, files = dicom_ct
    logic = SegmentationResultsLogic()
    plan = logic.planExport(volume, segmentation, export.RTSTRUCT, False, database.get)
    assert (
        plan.possible and plan.route == export.ROUTE_ENGINE_RTSTRUCT and plan.reference_files == [str(p) for p in files]
    )
    # With SlicerRT installed too: SlicerRT would write a second CT series with new UIDs and lose the patient.
    assert logic.planExport(volume, segmentation, export.RTSTRUCT, True, database.get) == plan

    written = logic.exportSegmentation(plan, volume, segmentation, tmp_path / "out", False, say=lambda _m: None)
    rtstruct = pydicom.dcmread(written[0])
    assert rtstruct.Modality == "RTSTRUCT"
    names = [roi.ROIName for roi in rtstruct.StructureSetROISequence]
    labels = [obs.ROIObservationLabel for obs in rtstruct.RTROIObservationsSequence if "ROIObservationLabel" in obs]
    assert names == ["Spleen", "Bone metastasis"] and all(len(label) <= 16 for label in labels)
    series = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert rtstruct.StudyInstanceUID == series.StudyInstanceUID
    if shutil.which("dciodvfy"):
        check = subprocess.run(["dciodvfy", str(written[0])], capture_output=True, text=True, timeout=60)
        assert "Error" not in check.stderr, check.stderr
    assert segmentation.GetSegmentation().GetNthSegment(1).GetName() == "Bone metastasis of the pelvis"


def test_dicom_seg_goes_through_the_engine_on_the_ct_files(scene, dicom_ct, tmp_path):
    volume, segmentation, database, _files = dicom_ct
    plan = export.plan_export(volume, segmentation, export.DICOM_SEG, True, database.get)
    assert plan.route == export.ROUTE_ENGINE_DICOMSEG
    written = export.export_with_engine(plan, segmentation, volume, tmp_path / "seg", say=lambda _m: None)
    seg = pydicom.dcmread(written)
    assert seg.Modality == "SEG" and [s.SegmentLabel for s in seg.SegmentSequence] == [
        "Spleen",
        "Bone metastasis of the pelvis",
    ]


def test_dicom_seg_without_highdicom_names_the_install_and_offers_rtstruct(scene, dicom_ct):
    volume, segmentation, database, _files = dicom_ct
    assert export.dicomseg_packages_problem() == ""  # highdicom is installed here
    plan = export.plan_export(volume, segmentation, export.DICOM_SEG, True, database.get, "no highdicom")
    assert not plan.possible and plan.problem == "no highdicom"
    assert plan.alternatives == [export.RTSTRUCT, export.SEG_NRRD]


def test_a_slicer_without_highdicom_is_told_how_to_get_dicom_seg():
    """Slicer 5.10 bundles no highdicom; the problem text names the package, the command and the other formats."""
    script = "from LesionSegLib import export\nprint(export.dicomseg_packages_problem())\n"
    printed = python_without(("highdicom",), script, timeout=60)  # absent, as in Slicer 5.10
    assert "pip_install('highdicom')" in printed and "RTSTRUCT or .seg.nrrd" in printed


def test_a_volume_without_dicom_origin_is_offered_a_seg_nrrd_instead(scene, ct_and_pair, tmp_path):
    ct, volume, ai, ref, ai_node, ref_node = ct_and_pair
    plan = export.plan_export(volume, ai_node, export.RTSTRUCT, False, {}.get)
    assert not plan.possible and plan.alternatives == [export.SEG_NRRD]
    assert "not loaded from DICOM" in plan.problem and ".seg.nrrd" in plan.problem and "SlicerRT" in plan.problem
    with pytest.raises(ValueError, match="not loaded from DICOM"):
        export.export_with_engine(plan, ai_node, volume, tmp_path)

    nrrd = export.plan_export(volume, ai_node, export.SEG_NRRD, False, None)
    written = SegmentationResultsLogic().exportSegmentation(nrrd, volume, ai_node, tmp_path, False, say=lambda _m: None)
    assert written == [tmp_path / "AI.seg.nrrd"]
    reader = slicer.vtkMRMLSegmentationStorageNode()
    reader.SetFileName(str(written[0]))
    loaded = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "loaded")
    assert reader.ReadData(loaded)
    back, infos = labelmap_from_segmentation_node(loaded, volume)
    assert [info.name for info in infos] == ["Spleen", "Lesion"]
    np.testing.assert_array_equal(back.array, ai)
    assert not list(tmp_path.glob("*.tmp*"))


def test_missing_dicom_files_and_a_missing_database_are_named(scene, dicom_ct):
    volume, segmentation, database, files = dicom_ct
    files[2].unlink()
    plan = export.plan_export(volume, segmentation, export.DICOM_SEG, False, database.get)
    assert not plan.possible and "1 of the 12 DICOM files" in plan.problem
    plan = export.plan_export(volume, segmentation, export.RTSTRUCT, False, None)
    assert "no DICOM database" in plan.problem
    plan = export.plan_export(None, segmentation, export.RTSTRUCT, False, database.get)
    assert "choose the CT volume" in plan.problem
    with pytest.raises(ValueError, match="unknown export format"):
        export.plan_export(volume, segmentation, "PNG", False, database.get)
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Nothing")
    with pytest.raises(ValueError, match="holds no segments"):
        export.plan_export(volume, empty, export.RTSTRUCT, False, database.get)


def test_slicerrt_export_gets_a_renamed_copy_under_the_cts_study_and_the_users_node_stays(scene, dicom_ct):
    volume, segmentation, _database, _files = dicom_ct
    copy, volume_item, copy_item = export.prepare_slicerrt_export(scene, volume, segmentation)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = hierarchy.GetItemParent(volume_item)
    assert hierarchy.GetItemLevel(study) == "Study" and hierarchy.GetItemParent(copy_item) == study
    assert hierarchy.GetItemDataNode(copy_item) is copy and copy is not segmentation
    copied = copy.GetSegmentation()
    assert [copied.GetNthSegment(i).GetName() for i in range(2)] == ["Spleen", "Bone metastasis"]
    original = segmentation.GetSegmentation()
    assert original.GetNthSegment(1).GetName() == "Bone metastasis of the pelvis"
    # A second export reuses the study rather than nesting a new one.
    _copy2, volume_item2, copy_item2 = export.prepare_slicerrt_export(scene, volume, segmentation)
    assert volume_item2 == volume_item and hierarchy.GetItemParent(copy_item2) == study


def test_roi_names_are_cut_to_16_bytes_and_stay_distinct():
    names = export.short_roi_names(["Bone metastasis 1", "Bone metastasis 2", "Spleen", "  x  y ", "脾臓の病変、左側"])
    assert names == ["Bone metastasis", "Bone metastasi 2", "Spleen", "x y", "脾臓の病変"]
    assert all(len(n.encode()) <= 16 for n in names)
    assert export.file_stem("CT – SpleenSeg 1.0/x") == "CT_SpleenSeg_1.0_x"
