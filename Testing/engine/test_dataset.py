"""Curated training datasets: adding cases, versions, provenance, verify, splits, nnU-Net export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.training_data import LESION, ORGAN, sphere_case, write_sphere_cases

from lesionseg.cli import main
from lesionseg.datasets import (
    Dataset,
    add_case,
    export_nnunet,
    init_dataset,
    remove_case,
    split_dataset,
    verify_dataset,
)
from lesionseg.datasets.store import sha256_file
from lesionseg.image import Image
from lesionseg.io import read_image, write_image
from lesionseg.io.nrrd import write_nrrd
from lesionseg.labels import LabelInfo

NAMES = [LabelInfo(ORGAN, "Organ"), LabelInfo(LESION, "Lesion")]


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    init_dataset(root, {1: "organ", 2: "lesion"}, name="Spheres", lesion_labels=[2])
    return root


def test_cases_added_on_the_command_line_load_through_monai(tmp_path: Path, dataset: Path) -> None:
    from monai.data import load_decathlon_datalist
    from monai.transforms import LoadImaged

    sources = write_sphere_cases(tmp_path / "src", 2, size=16)
    for case in sources:
        assert main(["dataset", "add", "--dataset", str(dataset), "--image", str(case / "image.nii.gz"),
                     "--seg", str(case / "label.nii.gz"), "--annotator", "dr.a"]) == 0  # fmt: skip
    entries = load_decathlon_datalist(str(dataset / "dataset.json"), True, "training")
    assert [Path(e["image"]).name for e in entries] == ["case_0001.nii.gz", "case_0002.nii.gz"]
    loaded = LoadImaged(keys=["image", "label"])(entries[1])
    assert tuple(loaded["label"].shape) == (16, 16, 16)
    assert set(np.unique(loaded["label"].numpy())) == {0, ORGAN, LESION}
    doc = json.loads((dataset / "dataset.json").read_text())
    assert doc["numTraining"] == 2 and doc["labels"] == {"0": "background", "1": "organ", "2": "lesion"}
    assert verify_dataset(dataset).ok


def test_saving_a_case_again_keeps_the_earlier_version(dataset: Path) -> None:
    image, label = sphere_case(1, size=16)
    first = add_case(dataset, image, label, NAMES, case_id="liver_07", provenance={"annotator": "a"})
    edited = label.with_array(np.where(label.array == LESION, ORGAN, label.array).astype(np.uint8))
    second = add_case(dataset, image, edited, NAMES, case_id="liver_07", provenance={"annotator": "b"})
    assert (first.version, second.version) == (1, 2)
    assert second.labels_present == (ORGAN,)
    assert not np.any(read_image(dataset / "labelsTr" / "liver_07.nii.gz").array == LESION)
    kept = read_image(dataset / "versions" / "liver_07" / "v1" / "label.nii.gz")
    np.testing.assert_array_equal(kept.array, label.array)
    versions = Dataset(dataset).manifest()["cases"]["liver_07"]["versions"]
    assert [v["provenance"]["annotator"] for v in versions] == ["a", "b"]
    assert [v["has_lesion"] for v in versions] == [True, False]
    for version in versions:
        for entry in version["files"].values():
            assert sha256_file(dataset / entry["path"]) == entry["sha256"]


def test_add_records_provenance_from_options_and_a_dicom_sidecar(tmp_path: Path, dataset: Path, capsys) -> None:
    (case,) = write_sphere_cases(tmp_path / "src", 1, size=16)
    (case / "image.json").write_text(json.dumps({"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.4"}))
    code = main(["dataset", "add", "--dataset", str(dataset), "--image", str(case / "image.nii.gz"),
                 "--seg", str(case / "label.nii.gz"), "--source-model", "spleen-unet@0.5.9", "--annotator", "dr.b",
                 "--case-id", "p01"])  # fmt: skip
    assert code == 0
    provenance = Dataset(dataset).manifest()["cases"]["p01"]["versions"][0]["provenance"]
    assert provenance["source_model"] == "spleen-unet" and provenance["source_model_version"] == "0.5.9"
    assert provenance["ai_assisted"] is True and provenance["annotator"] == "dr.b"
    assert provenance["study_uid"] == "1.2.3" and provenance["series_uid"] == "1.2.3.4"
    assert provenance["saved_at"].endswith("Z") and provenance["saved_at"][:2] == "20"
    capsys.readouterr()
    assert main(["dataset", "list", str(dataset), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["case"] == "p01" and row["status"] == "active" and row["provenance"]["annotator"] == "dr.b"
    # One writer at a time: a second save while the lock is held is refused, not interleaved.
    with Dataset(dataset).lock(), pytest.raises(ValueError, match="another process is writing"):
        add_case(dataset, *sphere_case(0, size=16), NAMES)


def test_label_map_picks_values_by_segment_name_from_a_seg_nrrd(tmp_path: Path, dataset: Path) -> None:
    image, label = sphere_case(2, size=16)
    write_image(image, tmp_path / "ct.nrrd")
    # Slicer's .seg.nrrd: values 1 and 2 named in the header, in the opposite order to the dataset.
    swapped = label.with_array(np.choose(label.array, [0, 2, 1]).astype(np.uint8))
    write_nrrd(swapped, tmp_path / "seg.seg.nrrd",
               {"Segment0_Name": "Tumour", "Segment0_LabelValue": "1", "Segment0_Layer": "0",
                "Segment1_Name": "Spleen", "Segment1_LabelValue": "2", "Segment1_Layer": "0"})  # fmt: skip
    code = main(["dataset", "add", "--dataset", str(dataset), "--image", str(tmp_path / "ct.nrrd"),
                 "--seg", str(tmp_path / "seg.seg.nrrd"), "--label-map", "Spleen=1,Tumour=2"])  # fmt: skip
    assert code == 0
    stored = read_image(dataset / "labelsTr" / "case_0001.nii.gz")
    np.testing.assert_array_equal(stored.array, label.array)


def test_add_refuses_bad_input_with_a_clear_error(tmp_path: Path, dataset: Path, capsys) -> None:
    image, label = sphere_case(3, size=16)
    shifted = Image(label.array, label.spacing, label.origin + 5.0, label.direction)
    with pytest.raises(ValueError, match="does not lie on the reference image's grid"):
        add_case(dataset, image, shifted, NAMES)
    with pytest.raises(ValueError, match="label value 7 is not known in dataset.json"):
        add_case(dataset, image, label.with_array((label.array > 0) * np.uint8(7)))
    with pytest.raises(ValueError, match="segment 'Kidney'.*--label-map"):
        add_case(dataset, image, label, {1: "Kidney", 2: "Lesion"})
    with pytest.raises(ValueError, match="invalid case id"):
        add_case(dataset, image, label, NAMES, case_id="../evil")
    write_image(image, tmp_path / "ct.nii.gz")
    write_image(label, tmp_path / "seg.nii.gz")
    code = main(["dataset", "add", "--dataset", str(dataset), "--image", str(tmp_path / "ct.nii.gz"),
                 "--seg", str(tmp_path / "seg.nii.gz"), "--label-map", "organ=9"])  # fmt: skip
    assert code == 2
    assert "9 is not a label of this dataset" in capsys.readouterr().err
    assert Dataset(dataset).manifest()["cases"] == {}


def test_verify_lists_a_corrupted_file_and_a_wrong_label_value(dataset: Path, capsys) -> None:
    for seed in range(3):
        add_case(dataset, *sphere_case(seed, size=16), NAMES)
    assert main(["dataset", "verify", str(dataset)]) == 0
    corrupt = dataset / "imagesTr" / "case_0001.nii.gz"
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    label_file = dataset / "labelsTr" / "case_0002.nii.gz"
    label = read_image(label_file)
    write_image(label.with_array(np.where(label.array == LESION, 7, label.array).astype(np.uint8)), label_file)
    shifted_file = dataset / "labelsTr" / "case_0003.nii.gz"
    shifted = read_image(shifted_file)
    write_image(Image(shifted.array, shifted.spacing, shifted.origin + 4.0, shifted.direction), shifted_file)
    assert main(["dataset", "verify", str(dataset)]) == 1
    out = capsys.readouterr().out
    assert "case_0001: SHA-256 matches no saved version in manifest.json: ./imagesTr/case_0001.nii.gz" in out
    assert "case_0002: label values [7] are not in dataset.json labels [0, 1, 2]" in out
    assert "case_0003: label and image are on different grids (origin" in out
    # Also listed: the changed hashes of both edited labels, and that the corrupt image cannot be decoded.
    assert "case_0001: cannot be read" in out and "3 cases checked: 6 problems" in out


def test_remove_moves_a_case_to_a_trash_version(dataset: Path) -> None:
    add_case(dataset, *sphere_case(0, size=16), NAMES, case_id="a")
    add_case(dataset, *sphere_case(1, size=16), NAMES, case_id="b")
    assert main(["dataset", "remove", str(dataset), "a", "--reason", "motion artefact"]) == 0
    doc = json.loads((dataset / "dataset.json").read_text())
    assert [e["case"] for e in doc["training"]] == ["b"] and doc["numTraining"] == 1
    assert not (dataset / "imagesTr" / "a.nii.gz").exists()
    assert (dataset / "versions" / "a" / "v1" / "image.nii.gz").is_file()
    case = Dataset(dataset).manifest()["cases"]["a"]
    assert case["status"] == "removed" and case["versions"][-1]["removed"] is True
    assert case["versions"][-1]["provenance"]["reason"] == "motion artefact"
    assert verify_dataset(dataset).ok
    again = add_case(dataset, *sphere_case(2, size=16), NAMES, case_id="a")
    assert again.version == 3
    with pytest.raises(ValueError, match="no active case 'zzz'"):
        remove_case(dataset, "zzz")


def test_split_is_seeded_stratified_and_can_keep_lesion_free_cases_out_of_training(dataset: Path) -> None:
    image, label = sphere_case(0, size=8, organ_radius_mm=6)
    for n in range(20):
        has_lesion = n % 2 == 0
        array = label.array if has_lesion else np.where(label.array == LESION, ORGAN, label.array)
        scan = image.with_array(image.array + np.int16(n))  # one scan per case: a repeated image is refused
        add_case(dataset, scan, label.with_array(array.astype(np.uint8)), NAMES, case_id=f"c{n:02d}")
    first = split_dataset(dataset, seed=3, validation=0.2, test=0.1)
    again = split_dataset(dataset, seed=3, validation=0.2, test=0.1)
    assert {k: first[k] for k in ("train", "validation", "test")} == {
        k: again[k] for k in ("train", "validation", "test")
    }
    assert split_dataset(dataset, seed=4)["validation"] != first["validation"]
    lesion = set(first["lesion_cases"])
    assert len(lesion) == 10
    assert sum(c in lesion for c in first["validation"]) == 2 and len(first["validation"]) == 4
    assert sum(c in lesion for c in first["test"]) == 1 and len(first["test"]) == 2
    assert sorted(first["train"] + first["validation"] + first["test"]) == [f"c{n:02d}" for n in range(20)]
    assert main(["dataset", "split", str(dataset), "--seed", "3", "--exclude-lesion-free-from-train"]) == 0
    stored = json.loads((dataset / "dataset.json").read_text())["splits"]
    assert stored["train"] and all(c in lesion for c in stored["train"])
    assert len(stored["excluded"]) == 7 and stored["validation"] == first["validation"]


def test_export_to_nnunet_raw_layout(tmp_path: Path, dataset: Path) -> None:
    for seed in range(2):
        add_case(dataset, *sphere_case(seed, size=16), NAMES, case_id=f"sph{seed}")
    assert main(["dataset", "export-nnunet", str(dataset), "--output", str(tmp_path / "raw"), "--id", "501"]) == 0
    target = tmp_path / "raw" / "Dataset501_Spheres"
    assert sorted(p.name for p in (target / "imagesTr").iterdir()) == ["sph0_0000.nii.gz", "sph1_0000.nii.gz"]
    assert sorted(p.name for p in (target / "labelsTr").iterdir()) == ["sph0.nii.gz", "sph1.nii.gz"]
    doc = json.loads((target / "dataset.json").read_text())
    assert doc["channel_names"] == {"0": "CT"} and doc["labels"] == {"background": 0, "organ": 1, "lesion": 2}
    assert doc["numTraining"] == 2 and doc["file_ending"] == ".nii.gz"
    assert sha256_file(target / "labelsTr" / "sph1.nii.gz") == sha256_file(dataset / "labelsTr" / "sph1.nii.gz")
    with pytest.raises(ValueError, match="already exists"):
        export_nnunet(dataset, tmp_path / "raw", 501)


@pytest.mark.slow
def test_a_synth_phantom_joins_a_spleen_dataset_by_segment_name(tmp_path: Path) -> None:
    assert main(["synth", "--output", str(tmp_path / "synth"), "--cases", "1", "--seed", "3"]) == 0
    (case,) = [p for p in (tmp_path / "synth").iterdir() if (p / "labels.json").is_file()]
    dataset = tmp_path / "spleen"
    assert main(["dataset", "init", str(dataset), "--labels", "spleen=1"]) == 0
    add = ["dataset", "add", "--dataset", str(dataset), "--image", str(case / "image.nii.gz"),
           "--seg", str(case / "label.nii.gz")]  # fmt: skip
    assert main(add) == 2  # liver, kidneys, ... match no dataset label
    assert main([*add, "--drop-unmapped"]) == 0
    source = read_image(case / "label.nii.gz")
    stored = read_image(dataset / "labelsTr" / "case_0001.nii.gz")
    names = {item["name"]: item["value"] for item in json.loads((case / "labels.json").read_text())["labels"]}
    np.testing.assert_array_equal(stored.array, (source.array == names["spleen"]).astype(np.uint8))
    assert main(["dataset", "verify", str(dataset)]) == 0
