"""Reviewing a lesion result lesion by lesion on a real slicer-core scene: the order of confidence, accept,
reject and undo voxel-exact, the review saved with the scene, accepted-only exports read back by plastimatch,
and the review in a saved training case's manifest."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np
import pytest
from support.plastimatch import PLASTIMATCH, on_grid, plastimatch_masks

from lesionseg.datasets import Dataset
from lesionseg.dicom import read_dicom_volume, write_ct_series
from lesionseg.image import Image
from lesionseg.io import read_image
from lesionseg.metrics import lesion_table
from lesionseg.mrml import (
    labelmap_from_segmentation_node,
    segmentation_node_from_labelmap,
    update_segment_from_mask,
    volume_node_from_image,
)

slicer = pytest.importorskip("slicer")

from LesionSegLib import export, lesions, review, tables, training  # noqa: E402
from LesionSegLib.results import SegmentationResultsLogic  # noqa: E402

PROSTATE, LESION = 1, 2


def a_ct() -> Image:
    values = np.random.default_rng(19).normal(40, 10, (12, 24, 28)).round().astype(np.int16)
    # Flipped axes and unequal spacing, so a lesion found on a transposed or mirrored grid lands elsewhere.
    return Image(values, (0.8, 0.9, 2.5), (-40.0, 25.0, -90.0), np.diag([-1.0, 1.0, -1.0]))


def result_labels(shape) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[1:11, 2:22, 2:12] = PROSTATE
    labels[2:6, 4:10, 14:20] = LESION  # 144 voxels: the largest lesion
    labels[7:10, 14:19, 16:21] = LESION  # 75 voxels
    labels[8:10, 3:6, 22:25] = LESION  # 18 voxels
    labels[4:6, 6:9, 10:13] = LESION  # 18 voxels, overlapping the prostate's box: drawn over the gland
    return labels


def component(labels: np.ndarray, box) -> np.ndarray:
    mask = np.zeros(labels.shape, bool)
    mask[box] = labels[box] == LESION
    return mask


BIG = np.s_[2:6, 4:10, 14:20]
MIDDLE = np.s_[7:10, 14:19, 16:21]
SMALL = np.s_[8:10, 3:6, 22:25]
ON_GLAND = np.s_[4:6, 6:9, 10:13]


def uncertainty_rows(ct: Image, labels: np.ndarray) -> list[dict]:
    """The engine's per-lesion rows as `segment --uncertainty tta` writes them; centres moved by 0.4 mm, as a
    model's soft lesion does not sit exactly on the reviewed one."""
    confidences = {144: 0.91, 75: 0.42}
    rows = []
    for row in lesion_table(ct.with_array((labels == LESION).astype(np.uint8))):
        if row["voxels"] not in confidences:
            continue  # the 18-voxel lesions were drawn by hand: the model has no row for them
        r, a, s = row["centroid_ras_mm"]
        rows.append(
            {
                "label": LESION,
                "name": "Lesion",
                "voxels": row["voxels"],
                "volume_mm3": row["voxels"] * ct.voxel_volume_mm3,
                "confidence": confidences[row["voxels"]],
                "mean_probability": 0.8,
                "mean_entropy": 0.1,
                "mean_mutual_information": 0.01,
                "centroid_ras_mm": [r + 0.4, a, s - 0.4],
            }
        )
    return rows


def result_nodes(scene, name: str, lesion_name: str):
    ct = a_ct()
    labels = result_labels(ct.array.shape)
    volume = volume_node_from_image(scene, ct, "CT")
    segmentation = segmentation_node_from_labelmap(
        scene, ct.with_array(labels), name, {PROSTATE: "Prostate", LESION: lesion_name}, volume
    )
    return ct, labels, volume, segmentation


@pytest.fixture
def reviewed(scene):
    """A lesion result made with uncertainty: the module put the engine's lesion rows on the node."""
    ct, labels, volume, segmentation = result_nodes(scene, "AI result", "Lesion")
    segmentation.SetAttribute(review.UNCERTAINTY_ATTRIBUTE, json.dumps(uncertainty_rows(ct, labels)))
    return ct, labels, volume, segmentation


def by_voxels(started: review.Review) -> dict[int, review.ReviewedLesion]:
    return {lesion.voxels: lesion for lesion in started.lesions}


def the_lesion(started: review.Review, labels: np.ndarray, box) -> review.ReviewedLesion:
    """The review's lesion whose seed voxel lies in ``box``."""
    mask = component(labels, box)
    (found,) = [x for x in started.lesions if mask[tuple(x.seed_kji)]]
    return found


def accept_big_reject_middle(segmentation, volume, labels, rejecter: str = "Dr. Osei"):
    """The usual review: the largest lesion accepted, the middle one rejected, the small ones left unreviewed."""
    started = review.start_review(segmentation, volume)
    big, middle = the_lesion(started, labels, BIG), the_lesion(started, labels, MIDDLE)
    review.accept(segmentation, big.id, "Dr. Osei")
    review.reject(segmentation, middle.id, rejecter)
    return big, middle


def test_review_lists_the_lesion_segment_with_confidence_and_steps_least_confident_first(scene, reviewed):
    ct, labels, volume, segmentation = reviewed
    started = review.start_review(segmentation, volume)

    # Only the lesion segment is reviewed (the uncertainty rows name it); the prostate is anatomy.
    assert {x.segment for x in started.lesions} == {"Lesion"} and len(started.lesions) == 4
    assert sorted(x.voxels for x in started.lesions) == [18, 18, 75, 144]
    engine = {row["voxels"]: row for row in lesion_table(ct.with_array((labels == LESION).astype(np.uint8)))}
    for lesion in started.lesions:
        if lesion.voxels != 18:
            assert lesion.centroid_ras_mm == pytest.approx(engine[lesion.voxels]["centroid_ras_mm"])
        assert lesion.volume_mm3 == pytest.approx(lesion.voxels * ct.voxel_volume_mm3)
        assert lesion.status == review.UNREVIEWED and lesion.reviewer == "" and lesion.time == ""
        assert labels[tuple(lesion.seed_kji)] == LESION
    assert by_voxels(started)[144].confidence == 0.91 and by_voxels(started)[75].confidence == 0.42
    # A hand-drawn lesion has no row of the model: no confidence, rather than the nearest row's.
    assert [x.confidence for x in started.lesions if x.voxels == 18] == [None, None]

    order = review.review_order(started)
    assert [x.confidence for x in order][:2] == [0.42, 0.91]
    assert [x.voxels for x in order] == [75, 144, 18, 18]
    assert review.next_lesion(started) is order[0]
    assert [review.next_lesion(started, x.id).id for x in order] == [x.id for x in order[1:] + order[:1]]
    assert [review.previous_lesion(started, x.id).id for x in order] == [x.id for x in order[-1:] + order[:-1]]
    assert review.previous_lesion(started) is order[-1]

    # The review is on the node, and starting again keeps it; restarting lists the lesions anew.
    assert review.review_of(segmentation).lesions == started.lesions
    assert json.loads(segmentation.GetAttribute(review.REVIEW_ATTRIBUTE))["lesions"][0]["status"] == "unreviewed"
    review.accept(segmentation, order[0].id, "Dr. Osei")
    assert review.start_review(segmentation, volume).lesion(order[0].id).status == review.ACCEPTED
    assert review.start_review(segmentation, volume, restart=True).counts() == {
        "unreviewed": 4,
        "accepted": 0,
        "rejected": 0,
    }
    assert not review.can_undo(segmentation)
    # A minimum volume leaves the small lesions out of the review.
    assert len(review.start_review(segmentation, volume, 100.0, restart=True).lesions) == 2


def test_without_uncertainty_the_order_is_by_volume_and_lesion_segments_are_known_by_name(scene):
    ct, labels, volume, segmentation = result_nodes(scene, "Mets", "Bone metastasis")
    started = review.start_review(segmentation, volume)
    assert {x.segment for x in started.lesions} == {"Bone metastasis"}
    assert all(x.confidence is None for x in started.lesions)
    assert [x.voxels for x in review.review_order(started)] == [144, 75, 18, 18]
    # The undo history stays with the node when no Python name holds it any longer (a widget re-reads nodes).
    review.accept(segmentation, started.lesions[0].id, "Dr. Osei")
    node_id = segmentation.GetID()
    del segmentation
    gc.collect()
    assert review.can_undo(scene.GetNodeByID(node_id))
    assert review.undo(scene.GetNodeByID(node_id)).status == review.UNREVIEWED
    # No segment named like a lesion: every segment is reviewed.
    plain = segmentation_node_from_labelmap(scene, ct.with_array(labels), "Plain", {1: "A", 2: "B"}, volume)
    assert {x.segment for x in review.start_review(plain, volume).lesions} == {"A", "B"}


def test_rejecting_removes_exactly_that_lesion_and_undo_puts_every_voxel_back(scene, reviewed):
    ct, labels, volume, segmentation = reviewed
    logic = SegmentationResultsLogic()
    started = logic.startLesionReview(segmentation, volume)
    before, _ = labelmap_from_segmentation_node(segmentation, volume)
    np.testing.assert_array_equal(before.array, labels)

    target = the_lesion(started, labels, MIDDLE)
    rejected = logic.rejectLesion(segmentation, target.id, "Dr. Osei")
    assert rejected.status == review.REJECTED and rejected.reviewer == "Dr. Osei" and rejected.time
    after, _ = labelmap_from_segmentation_node(segmentation, volume)
    expected = labels.copy()
    expected[component(labels, MIDDLE)] = 0
    np.testing.assert_array_equal(after.array, expected)  # nothing else moved: not the prostate, not a lesion
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 2
    assert review.review_of(segmentation).lesion(target.id).status == review.REJECTED
    with pytest.raises(ValueError, match="already rejected"):
        logic.rejectLesion(segmentation, target.id, "Dr. Osei")
    with pytest.raises(ValueError, match="Undo the rejection"):
        logic.acceptLesion(segmentation, target.id, "Dr. Osei")

    # The lesion beside the gland: only its voxels go, the prostate segment around it stays as it was.
    over = the_lesion(started, labels, ON_GLAND)
    logic.rejectLesion(segmentation, over.id, "Dr. Osei")
    prostate_only, _ = labelmap_from_segmentation_node(segmentation, volume, {"Prostate": 1})
    np.testing.assert_array_equal(prostate_only.array, labels == PROSTATE)

    undone = logic.undoLesionReview(segmentation)
    assert undone.id == over.id and undone.status == review.UNREVIEWED and undone.reviewer == ""
    undone = logic.undoLesionReview(segmentation)
    assert undone.id == target.id and undone.status == review.UNREVIEWED
    restored, _ = labelmap_from_segmentation_node(segmentation, volume)
    np.testing.assert_array_equal(restored.array, labels)
    assert review.review_of(segmentation).counts()["unreviewed"] == 4
    with pytest.raises(ValueError, match="no lesion decision to undo"):
        logic.undoLesionReview(segmentation)


def test_an_accepted_lesion_is_locked_against_reject_until_the_acceptance_is_undone(scene, reviewed):
    _ct, labels, volume, segmentation = reviewed
    started = review.start_review(segmentation, volume)
    big = the_lesion(started, labels, BIG)
    accepted = review.accept(segmentation, big.id, "  Dr. Osei ")
    assert accepted.status == review.ACCEPTED and accepted.reviewer == "Dr. Osei"
    with pytest.raises(ValueError, match=r"accepted by Dr. Osei and is locked; Undo the acceptance"):
        review.reject(segmentation, big.id, "Dr. Lind")
    untouched, _ = labelmap_from_segmentation_node(segmentation, volume)
    np.testing.assert_array_equal(untouched.array, labels)
    with pytest.raises(ValueError, match="already accepted"):
        review.accept(segmentation, big.id, "Dr. Lind")

    assert review.undo(segmentation).status == review.UNREVIEWED
    review.reject(segmentation, big.id, "Dr. Lind")
    after, _ = labelmap_from_segmentation_node(segmentation, volume)
    assert not after.array[component(labels, BIG)].any()


def test_refusals_name_what_to_do(scene, reviewed):
    _ct, _labels, volume, segmentation = reviewed
    with pytest.raises(ValueError, match="start the review first"):
        review.accept(segmentation, 1, "Dr. Osei")
    with pytest.raises(ValueError, match="start the review first"):
        review.accepted_labelmap(segmentation, volume)
    with pytest.raises(ValueError, match="choose the volume"):
        review.start_review(segmentation, None)
    review.start_review(segmentation, volume)
    with pytest.raises(ValueError, match="reviewer's name"):
        review.accept(segmentation, 1, " ")
    with pytest.raises(ValueError, match="no lesion 9"):
        review.reject(segmentation, 9, "Dr. Osei")
    with pytest.raises(ValueError, match="no lesion decision to undo"):
        review.undo(segmentation)


def test_a_saved_scene_reopens_with_the_review_and_an_empty_undo_history(scene, reviewed, tmp_path):
    _ct, labels, volume, segmentation = reviewed
    big, middle = accept_big_reject_middle(segmentation, volume, labels)
    saved = review.review_of(segmentation)

    # Slicer's own scene writer: a data bundle folder (the .mrb layout) with the .mrml and its files.
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    application = slicer.vtkMRMLApplicationLogic()
    application.SetMRMLScene(scene)
    assert application.SaveSceneToSlicerDataBundleDirectory(str(bundle))
    assert (bundle / "Data" / "AI result.seg.nrrd").is_file()

    reopened = slicer.vtkMRMLScene()
    reopened.SetURL(str(next(bundle.glob("*.mrml"))))
    assert reopened.Connect()
    node = reopened.GetFirstNodeByName("AI result")
    ct_node = reopened.GetFirstNodeByName("CT")
    assert node is not segmentation and review.review_of(node) == saved
    assert review.review_of(node).lesion(big.id).status == review.ACCEPTED
    assert review.review_of(node).lesion(middle.id).reviewer == "Dr. Osei"
    assert not review.can_undo(node)  # the statuses survive, the undo history does not
    with pytest.raises(ValueError, match="not saved with the scene"):
        review.undo(node)
    # The rejected voxels stayed out, and the review goes on: the accepted lesion is still locked.
    reloaded, _ = labelmap_from_segmentation_node(node, ct_node)
    assert not reloaded.array[component(labels, MIDDLE)].any() and reloaded.array[component(labels, BIG)].all()
    with pytest.raises(ValueError, match="locked"):
        review.reject(node, big.id, "Dr. Lind")
    small = the_lesion(review.review_of(node), labels, SMALL)
    review.reject(node, small.id, "Dr. Lind")  # finds its volume by the saved id in the reopened scene
    assert not labelmap_from_segmentation_node(node, ct_node)[0].array[component(labels, SMALL)].any()


def test_accepted_labelmap_keeps_only_accepted_lesions_and_the_other_segments_whole(scene, reviewed):
    _ct, labels, volume, segmentation = reviewed
    started = review.start_review(segmentation, volume)
    review.accept(segmentation, the_lesion(started, labels, BIG).id, "Dr. Osei")
    review.accept(segmentation, the_lesion(started, labels, ON_GLAND).id, "Dr. Osei")
    review.reject(segmentation, the_lesion(started, labels, MIDDLE).id, "Dr. Osei")

    kept, infos = review.accepted_labelmap(segmentation, volume)
    assert [info.name for info in infos] == ["Prostate", "Lesion"]
    expected = np.where(labels == LESION, 0, labels)
    expected[component(labels, BIG) | component(labels, ON_GLAND)] = LESION
    np.testing.assert_array_equal(kept.array, expected)  # the unreviewed small lesion is gone too
    # The node itself keeps the unreviewed lesion: only a reject edits it.
    assert labelmap_from_segmentation_node(segmentation, volume)[0].array[component(labels, SMALL)].all()


@pytest.fixture
def dicom_result(scene, tmp_path):
    """The result on a CT from a DICOM series, as Slicer's DICOM module loads it, with a review."""
    files = write_ct_series(a_ct(), tmp_path / "ct", uid_seed="lesion-review")
    ct = read_dicom_volume(tmp_path / "ct")
    volume = volume_node_from_image(scene, ct, "CT from DICOM")
    import pydicom

    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]
    volume.SetAttribute("DICOM.instanceUIDs", " ".join(uids))
    labels = result_labels(ct.array.shape)
    segmentation = segmentation_node_from_labelmap(
        scene, ct.with_array(labels), "AI result", {PROSTATE: "Prostate", LESION: "Lesion"}, volume
    )
    accept_big_reject_middle(segmentation, volume, labels)
    return ct, labels, volume, segmentation, dict(zip(uids, map(str, files), strict=True)), tmp_path / "ct"


def test_seg_nrrd_of_accepted_lesions_only_holds_no_rejected_or_unreviewed_lesion(scene, dicom_result, tmp_path):
    ct, labels, volume, segmentation, _database, _ct_dir = dicom_result
    logic = SegmentationResultsLogic()
    plan = logic.planExport(volume, segmentation, export.SEG_NRRD, False, None)
    (written,) = logic.exportSegmentation(plan, volume, segmentation, tmp_path / "nrrd", False, lambda _m: None, True)
    assert written.name == "AI_result.seg.nrrd"
    nodes_after = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    assert nodes_after == 1  # the accepted-only copy is gone again

    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(written))
    loaded = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "read back")
    assert storage.ReadData(loaded)
    read_back, infos = labelmap_from_segmentation_node(loaded, volume)
    assert [info.name for info in infos] == ["Prostate", "Lesion"]
    lesion = read_back.array == LESION
    assert lesion[component(labels, BIG)].all() and lesion.sum() == component(labels, BIG).sum()
    for box in (MIDDLE, SMALL, ON_GLAND):
        assert not lesion[component(labels, box)].any()
    np.testing.assert_array_equal(read_back.array == PROSTATE, labels == PROSTATE)

    # Without the option the export holds what the node holds: the unreviewed lesions too.
    every = export.export_with_engine(plan, segmentation, volume, tmp_path / "all", say=lambda _m: None)
    storage.SetFileName(str(every))
    whole = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "whole")
    assert storage.ReadData(whole)
    assert (labelmap_from_segmentation_node(whole, volume)[0].array == LESION)[component(labels, SMALL)].all()


@pytest.mark.skipif(PLASTIMATCH is None, reason="plastimatch reads the RTSTRUCT back (apt-get install plastimatch)")
def test_rtstruct_of_accepted_lesions_only_read_by_plastimatch_holds_only_the_accepted_one(
    scene, dicom_result, tmp_path
):
    ct, labels, volume, segmentation, database, ct_dir = dicom_result
    logic = SegmentationResultsLogic()
    plan = logic.planExport(volume, segmentation, export.RTSTRUCT, False, database.get)
    assert plan.route == export.ROUTE_ENGINE_RTSTRUCT
    (written,) = logic.exportSegmentation(plan, volume, segmentation, tmp_path / "rt", False, lambda _m: None, True)

    masks = plastimatch_masks(Path(written), ct_dir, tmp_path / "masks")
    lesion = on_grid(masks["Lesion"], ct) > 0
    prostate = on_grid(masks["Prostate"], ct) > 0
    big = component(labels, BIG)
    # Contours along voxel edges give the solid box back exactly.
    np.testing.assert_array_equal(lesion, big)
    for box in (MIDDLE, SMALL, ON_GLAND):
        assert not lesion[component(labels, box)].any()
    assert prostate[labels == PROSTATE].mean() > 0.95


def test_a_reviewed_result_saved_as_a_training_case_records_the_review(scene, reviewed, tmp_path):
    _ct, labels, volume, segmentation = reviewed
    big, middle = accept_big_reject_middle(segmentation, volume, labels, rejecter="Dr. Lind")
    # Besides the review, the annotator trims the prostate by one slab of 20 x 10 voxels.
    prostate_id = segmentation.GetSegmentation().GetSegmentIdBySegmentName("Prostate")
    trimmed = labels == PROSTATE
    trimmed[1] = False
    update_segment_from_mask(segmentation, prostate_id, _ct.with_array(trimmed.astype(np.uint8)))

    record = training.save_case(tmp_path / "dataset", volume, segmentation, "Dr. Osei")
    manifest = Dataset(tmp_path / "dataset").manifest()
    saved = manifest["cases"][record.case_id]["versions"][-1]["provenance"]["lesion_review"]
    assert saved["counts"] == {"unreviewed": 2, "accepted": 1, "rejected": 1}
    (accepted,) = saved["accepted"]
    (rejected,) = saved["rejected"]
    assert accepted["id"] == big.id and accepted["reviewer"] == "Dr. Osei" and accepted["time"]
    assert accepted["volume_mm3"] == pytest.approx(big.volume_mm3, abs=1e-3)
    assert accepted["centroid_ras_mm"] == pytest.approx(big.centroid_ras_mm, abs=1e-3)
    assert accepted["confidence"] == 0.91
    assert rejected["id"] == middle.id and rejected["reviewer"] == "Dr. Lind" and rejected["confidence"] == 0.42
    # The edits: the rejected lesion is accounted for by the review, the trimmed slab is the annotator's own.
    edits = {row["segment"]: row for row in saved["edits"]}
    assert edits["Prostate"]["net_edit_voxels"] == -200 and edits["Prostate"]["voxels_rejected"] == 0
    assert edits["Lesion"]["voxels_rejected"] == middle.voxels and edits["Lesion"]["net_edit_voxels"] == 0
    # The case's mask is the node as reviewed: the rejected lesion is not in it.
    case_labels = read_image(Dataset(tmp_path / "dataset").label_path(record.case_id))
    assert not case_labels.array[component(labels, MIDDLE)].any()

    # A case from a node never reviewed records no review.
    plain = segmentation_node_from_labelmap(scene, _ct.with_array(labels), "plain", {1: "Prostate"}, volume)
    assert "lesion_review" not in training.case_provenance(volume, plain, "Dr. Osei")


def test_the_lesion_table_shows_confidence_status_and_reviewer(scene, reviewed, tmp_path):
    _ct, labels, volume, segmentation = reviewed
    logic = SegmentationResultsLogic()
    _node, rows = logic.lesionTable(segmentation, volume, 0.0)
    # Before any review: the model's confidence, and no status.
    by_size = {round(r["volume_ml"] * 1000 / _ct.voxel_volume_mm3): r for r in rows if r["segment"] == "Lesion"}
    assert by_size[144]["confidence"] == 0.91 and by_size[75]["confidence"] == 0.42
    assert {r["status"] for r in rows} == {""}

    started = logic.startLesionReview(segmentation, volume)
    first = logic.nextLesion(segmentation)
    assert first.confidence == 0.42 and logic.previousLesion(segmentation, first.id).id != first.id
    logic.acceptLesion(segmentation, the_lesion(started, labels, BIG).id, "Dr. Osei")
    node, rows = logic.lesionTable(segmentation, volume, 0.0, csvPath=tmp_path / "lesions.csv")
    statuses = {(r["segment"], r["status"], r["reviewer"]) for r in rows}
    assert ("Lesion", "accepted", "Dr. Osei") in statuses and ("Lesion", "unreviewed", "") in statuses
    assert ("Prostate", "", "") in statuses  # not a lesion segment: not under review
    table = {r["status"]: r for r in tables.table_rows(node)}
    assert table["accepted"]["reviewer"] == "Dr. Osei" and table["accepted"]["confidence"] == pytest.approx(0.91)
    header = (tmp_path / "lesions.csv").read_text().splitlines()[0].split(",")
    assert header[-3:] == ["confidence", "status", "reviewer"] and header[0] == "id"
    assert [c.key for c in lesions.COLUMNS][:9] == [
        "id",
        "segment",
        "volume_ml",
        "longest_axial_diameter_mm",
        "centroid_r",
        "centroid_a",
        "centroid_s",
        "mean_hu",
        "max_hu",
    ]


def test_dicom_seg_of_accepted_lesions_only_holds_the_accepted_lesions_voxels(scene, dicom_result, tmp_path):
    import pydicom

    _ct, labels, volume, segmentation, database, _ct_dir = dicom_result
    plan = export.plan_export(volume, segmentation, export.DICOM_SEG, False, database.get)
    written = export.export_with_engine(plan, segmentation, volume, tmp_path / "seg", lambda _m: None, True)
    seg = pydicom.dcmread(written)
    numbers = {s.SegmentLabel: s.SegmentNumber for s in seg.SegmentSequence}
    frames = seg.pixel_array.reshape(-1, *seg.pixel_array.shape[-2:])
    of_segment = [
        group.SegmentIdentificationSequence[0].ReferencedSegmentNumber for group in seg.PerFrameFunctionalGroupsSequence
    ]
    lesion_voxels = sum(int(frame.sum()) for frame, n in zip(frames, of_segment, strict=True) if n == numbers["Lesion"])
    prostate_voxels = sum(
        int(frame.sum()) for frame, n in zip(frames, of_segment, strict=True) if n == numbers["Prostate"]
    )
    assert lesion_voxels == component(labels, BIG).sum()  # not the rejected one, not the unreviewed ones
    assert prostate_voxels == (labels == PROSTATE).sum()
