"""LesionSegLib's Qt-free training side on a real slicer-core scene: saving curated cases with provenance,
the case table, removing a case, refusals. (The real training run is in test_lesionseglib_background.py.)"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from lesionseg.datasets import Dataset
from lesionseg.image import Image
from lesionseg.mrml import segmentation_node_from_labelmap, volume_node_from_image

slicer = pytest.importorskip("slicer")

from LesionSegLib import segmenting, tables, training  # noqa: E402


def case_nodes(scene, seed: int, name: str):
    rng = np.random.default_rng(seed)
    values = rng.normal(0, 20, (24, 32, 32)).round().astype(np.int16)
    labels = np.zeros(values.shape, np.uint8)
    labels[8:16, 10:20, 10 + seed : 22 + seed] = 1
    labels[18:21, 24:28, 4:8] = 2
    values[labels > 0] += 150
    ct = Image(values, (1.5, 1.5, 2.0), (10.0 * seed, -5.0, 0.0), np.diag([-1.0, 1.0, 1.0]))
    volume = volume_node_from_image(scene, ct, f"{name} CT")
    segmentation = segmentation_node_from_labelmap(
        scene, ct.with_array(labels), f"{name} corrected", {1: "spleen", 2: "lesion"}, volume
    )
    return ct, labels, volume, segmentation


def test_saving_cases_records_provenance_and_fills_the_case_table(scene, tmp_path):
    folder = tmp_path / "dataset"
    ct, labels, volume, segmentation = case_nodes(scene, 0, "A")
    # An AI result that the annotator corrected: the segmentation carries the model's attributes.
    segmentation.SetAttribute(segmenting.MODEL_ID_ATTRIBUTE, "tiny-spleen")
    segmentation.SetAttribute(segmenting.MODEL_VERSION_ATTRIBUTE, "0.0.1")
    segmentation.SetAttribute(segmenting.THRESHOLD_ATTRIBUTE, "0.3")
    volume.SetAttribute("DICOM.instanceUIDs", "1.2.3.1 1.2.3.2")
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "P"), "S")
    series = hierarchy.CreateItem(study, volume)
    hierarchy.SetItemUID(series, "DICOM", "1.2.3")
    hierarchy.SetItemUID(study, "DICOM", "1.2")

    first = training.save_case(folder, volume, segmentation, "Dr. Rivera", note="checked twice")
    assert first.case_id == "case_0001" and first.version == 1 and first.labels_present == (1, 2)
    assert first.provenance["source_model"] == "tiny-spleen" and first.provenance["source_model_version"] == "0.0.1"
    assert first.provenance["source_threshold"] == 0.3
    assert first.provenance["annotator"] == "Dr. Rivera" and first.provenance["ai_assisted"] is True
    assert first.provenance["series_uid"] == "1.2.3" and first.provenance["study_uid"] == "1.2"
    assert first.provenance["instance_count"] == 2
    description = json.loads((folder / "dataset.json").read_text())
    assert description["labels"] == {"0": "background", "1": "spleen", "2": "lesion"}
    assert description["lesion_labels"] == [2]

    # A new version of the same case, then a manual case from another annotator.
    again = training.save_case(folder, volume, segmentation, "Dr. Rivera", case_id="case_0001")
    assert again.version == 2
    _ct, _labels, volume_b, segmentation_b = case_nodes(scene, 1, "B")
    second = training.save_case(folder, volume_b, segmentation_b, "J. Chen")
    assert second.case_id == "case_0002" and second.provenance["ai_assisted"] is False

    node = training.case_table(scene, folder)
    rows = tables.table_rows(node)
    assert [(r["case"], r["version"]) for r in rows] == [("case_0001", 2), ("case_0002", 1)]
    assert rows[0]["labels"] == "spleen, lesion" and rows[0]["provenance"] == "AI: tiny-spleen 0.0.1, by Dr. Rivera"
    assert rows[1]["provenance"] == "manual, by J. Chen"

    trash = training.remove_dataset_case(folder, "case_0002", by="J. Chen", reason="motion artefact")
    assert trash == 2 and Dataset(folder).active_cases() == ["case_0001"]
    training.case_table(scene, folder, node)
    assert node.GetNumberOfRows() == 1
    removed = Dataset(folder).manifest()["cases"]["case_0002"]
    assert removed["status"] == "removed" and removed["versions"][-1]["provenance"]["reason"] == "motion artefact"


def test_saving_a_corrected_mask_of_a_saved_image_makes_a_new_version_not_a_second_case(scene, tmp_path):
    folder = tmp_path / "dataset"
    ct, labels, volume, segmentation = case_nodes(scene, 0, "A")
    first = training.save_case(folder, volume, segmentation, "Dr. Rivera")
    # The annotator erases the lesion segment's voxels in Slicer and saves again, giving no case id.
    segmentation.GetSegmentation().RemoveSegment(segmentation.GetSegmentation().GetSegmentIdBySegmentName("lesion"))
    corrected = training.save_case(folder, volume, segmentation, "Dr. Rivera", label_map={"spleen": 1})
    assert (corrected.case_id, corrected.version) == (first.case_id, 2)
    assert corrected.labels_present == (1,)
    rows = tables.table_rows(training.case_table(scene, folder))
    assert [(r["case"], r["version"]) for r in rows] == [("case_0001", 2)]
    # The engine's own default, used by `lesionseg dataset add`, still refuses a silent second copy.
    from lesionseg.datasets import add_case

    with pytest.raises(ValueError, match="already case case_0001"):
        add_case(folder, ct, ct.with_array(labels), {1: "spleen", 2: "lesion"})


def test_bad_cases_are_refused_with_the_fix(scene, tmp_path):
    _ct, _labels, volume, segmentation = case_nodes(scene, 0, "A")
    with pytest.raises(ValueError, match="annotator"):
        training.save_case(tmp_path / "d", volume, segmentation, "  ")
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    with pytest.raises(ValueError, match="at least one segment"):
        training.save_case(tmp_path / "d", volume, empty, "A")
    labelmap = volume_node_from_image(scene, _ct.with_array(_labels), "L", labelmap=True)
    with pytest.raises(ValueError, match="is a labelmap"):
        training.save_case(tmp_path / "d", labelmap, segmentation, "A")
    with pytest.raises(ValueError, match="no cases yet"):
        training.create_dataset(tmp_path / "e", ["spleen"])
        training.TrainingRun(tmp_path / "e", "tiny", "m", tmp_path / "models", sys.executable)
    with pytest.raises(ValueError):
        training.write_training_config(tmp_path / "c.json", "no-such-preset", "m")
