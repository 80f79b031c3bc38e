"""Training never validates on what it trained on: repeated images, one patient on both sides, resumes on
changed data, label tables without foreground, and files that shadow a preset."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from support.cli import lesionseg
from support.training_data import sphere_case

from lesionseg.datasets import Dataset, add_case, init_dataset, split_dataset
from lesionseg.datasets.splits import assign_groups, case_groups
from lesionseg.dicom import write_ct_series
from lesionseg.io import write_image
from lesionseg.labels import LabelInfo
from lesionseg.training.config import load_config
from lesionseg.training.data import dataset_datalists

NAMES = [LabelInfo(1, "Organ"), LabelInfo(2, "Lesion")]


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    init_dataset(root, {1: "organ", 2: "lesion"}, name="Spheres", lesion_labels=[2])
    return root


@pytest.mark.parametrize(
    ("labels", "says"),
    [
        ("spleen=0", "0 is the background"),
        ("a=1,a=2", "'a' is given twice"),
        ("a=1,A=2", "given twice"),
        ("a=1,b=1", "both have value 1"),
        ("a=-1", "cannot be negative"),
        ("background=1", "name of label 0"),
    ],
)
def test_dataset_init_refuses_a_label_table_that_cannot_be_right(tmp_path, labels, says):
    done = lesionseg("dataset", "init", str(tmp_path / "ds"), "--labels", labels)
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "ds" / "dataset.json").exists()


def test_init_dataset_without_foreground_is_refused_by_the_engine_too(tmp_path):
    with pytest.raises(ValueError, match="0 is the background"):
        init_dataset(tmp_path / "a", {0: "spleen"})
    with pytest.raises(ValueError, match="at least one foreground label"):
        init_dataset(tmp_path / "b", {})


def test_adding_the_same_image_twice_is_refused_naming_the_case_it_already_is(tmp_path, dataset):
    image, label = sphere_case(0, size=16)
    write_image(image, tmp_path / "ct.nii.gz")
    write_image(label, tmp_path / "seg.nii.gz")
    add = ["dataset", "add", "--dataset", str(dataset), "--image", str(tmp_path / "ct.nii.gz"),
           "--seg", str(tmp_path / "seg.nii.gz"), "--label-map", "1=1,2=2"]  # fmt: skip
    assert lesionseg(*add).returncode == 0
    again = lesionseg(*add)
    assert again.returncode == 2 and "already case case_0001" in again.stderr and "--case-id case_0001" in again.stderr
    assert Dataset(dataset).active_cases() == ["case_0001"]
    # The help of `dataset add` says what happens.
    assert "already holds as another case" in " ".join(lesionseg("dataset", "add", "--help").stdout.split())
    # As a new version of that case it is welcome.
    assert lesionseg(*add, "--case-id", "case_0001").returncode == 0
    assert Dataset(dataset).manifest()["cases"]["case_0001"]["current"] == 2
    # The same voxels in another pixel type are the same image.
    with pytest.raises(ValueError, match="already case case_0001"):
        add_case(dataset, image.with_array(image.array.astype(np.float32)), label, NAMES)


def test_a_case_saved_before_images_were_hashed_is_still_recognised(dataset):
    image, label = sphere_case(3, size=16)
    add_case(dataset, image, label, NAMES, case_id="old")
    store = Dataset(dataset)
    manifest = store.manifest()
    del manifest["cases"]["old"]["versions"][0]["image_content_sha256"]
    store.write_manifest(manifest)
    with pytest.raises(ValueError, match="already case old"):
        add_case(dataset, image, label, NAMES)


def test_a_removed_case_image_can_be_added_again(dataset):
    from lesionseg.datasets import remove_case

    image, label = sphere_case(1, size=16)
    add_case(dataset, image, label, NAMES, case_id="first")
    remove_case(dataset, "first")
    assert add_case(dataset, image, label, NAMES).case_id == "case_0001"


def test_case_groups_join_cases_through_shared_patient_or_study():
    provenance = {
        "a": {"patient_key": "p1", "study_uid": "s1"},
        "b": {"study_uid": "s1"},
        "c": {"patient_key": "p1", "study_uid": "s2"},
        "d": {"study_uid": "s2"},
        "e": {"patient_key": "p2"},
        "f": {},
    }
    assert case_groups(provenance) == [["a", "b", "c", "d"], ["e"], ["f"]]
    dealt, rest = assign_groups([["x"], ["y"], ["z"]], [("validation", 1 / 3)], np.random.default_rng(0))
    assert len(dealt["validation"]) == 1 and len(rest) == 2


def _add_patients(dataset: Path, patients: int, per_patient: int) -> dict[str, str]:
    """Cases of several scans per patient (distinct images); returns {case: patient}."""
    owner = {}
    for p in range(patients):
        for n in range(per_patient):
            image, label = sphere_case(p, size=8, organ_radius_mm=6, lesion=(p % 2 == 0))
            scan = image.with_array(image.array + np.int16(n))
            case = f"p{p}_{n}"
            add_case(dataset, scan, label, NAMES, case_id=case, provenance={"patient_id": f"PAT-{p}"})
            owner[case] = f"PAT-{p}"
    return owner


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_split_keeps_every_patient_on_one_side(dataset, seed):
    owner = _add_patients(dataset, patients=8, per_patient=3)
    splits = split_dataset(dataset, seed=seed, validation=0.25, test=0.125)
    side = {case: key for key in ("train", "validation", "test") for case in splits[key]}
    assert sorted(side) == sorted(owner)
    for patient in set(owner.values()):
        assert len({side[c] for c, p in owner.items() if p == patient}) == 1, (patient, splits)
    assert splits["validation"] and splits["test"] and splits["train"]
    # The manifest keeps a hash of the PatientID, never the ID itself.
    manifest = (dataset / "manifest.json").read_text()
    assert "PAT-" not in manifest and "patient_key" in manifest


def test_training_default_split_keeps_a_patient_on_one_side_and_refuses_a_mixed_stored_split(dataset):
    owner = _add_patients(dataset, patients=4, per_patient=3)
    config = load_config("tiny")
    for seed in range(4):
        config["training"]["seed"] = seed
        data = dataset_datalists(dataset, config)
        assert {owner[c] for c in data["validation_ids"]}.isdisjoint({owner[c] for c in data["train_ids"]})
        assert data["validation_ids"]
    doc = json.loads((dataset / "dataset.json").read_text())
    doc["splits"] = {"train": ["p0_0", "p1_0", "p1_1", "p1_2", "p2_0", "p2_1", "p2_2", "p3_0", "p3_1", "p3_2"],
                     "validation": ["p0_1", "p0_2"], "test": [], "excluded": [], "seed": 0}  # fmt: skip
    Dataset(dataset).write_description(doc)
    with pytest.raises(ValueError, match="one patient or study on both sides"):
        dataset_datalists(dataset, config)


def test_dataset_add_of_a_dicom_series_records_its_patient_and_study(tmp_path, dataset):
    image, label = sphere_case(2, size=8, organ_radius_mm=6)
    write_ct_series(image, tmp_path / "series", patient_id="PAT-77", uid_seed="leak")
    write_image(label, tmp_path / "seg.nii.gz")
    done = lesionseg("dataset", "add", "--dataset", str(dataset), "--image", str(tmp_path / "series"),
                     "--seg", str(tmp_path / "seg.nii.gz"), "--label-map", "1=1,2=2")  # fmt: skip
    assert done.returncode == 0, done.stderr
    provenance = Dataset(dataset).manifest()["cases"]["case_0001"]["versions"][0]["provenance"]
    assert provenance["study_uid"] and provenance["series_uid"] and len(provenance["patient_key"]) == 20
    assert "PAT-77" not in json.dumps(provenance)


def test_a_file_named_like_a_preset_does_not_replace_the_preset(tmp_path, caplog):
    (tmp_path / "tiny").write_text("training: {epochs: 999}\n")
    preset = load_config("tiny")
    with caplog.at_level(logging.WARNING):
        import os

        before = os.getcwd()
        os.chdir(tmp_path)
        try:
            assert load_config("tiny") == preset
            assert load_config("./tiny")["training"]["epochs"] == 999
            with pytest.raises(ValueError, match="write it as a path: ./mine"):
                (tmp_path / "mine").write_text("{}\n")
                load_config("mine")
        finally:
            os.chdir(before)
    assert any("using the preset tiny" in record.getMessage() for record in caplog.records)


def test_train_with_a_preset_name_uses_the_preset_and_says_so_when_a_file_has_that_name(tmp_path):
    (tmp_path / "tiny").write_text(": not yaml at all [\n")
    done = lesionseg("train", "--dataset", str(tmp_path / "no-dataset"), "--config", "tiny",
                     "--output", str(tmp_path / "run"), cwd=tmp_path)  # fmt: skip
    assert "using the preset tiny" in done.stderr and "not valid YAML" not in done.stderr, done.stderr
    assert done.returncode == 2 and "no-dataset" in done.stderr


def test_a_kept_split_is_refused_once_one_of_its_cases_is_gone_or_saved_again(dataset):
    for seed in range(4):
        add_case(dataset, *sphere_case(seed, size=8, organ_radius_mm=6), NAMES, case_id=f"s{seed}")
    config = load_config("tiny")
    kept = dataset_datalists(dataset, config)["split_record"]
    assert dataset_datalists(dataset, config, kept)["validation_ids"] == kept["validation"]
    from lesionseg.datasets import remove_case

    remove_case(dataset, kept["validation"][0])
    with pytest.raises(ValueError, match=f"1 removed \\({kept['validation'][0]}\\).*--new-split"):
        dataset_datalists(dataset, config, kept)


QUICK = {"base": "tiny", "training": {"epochs": 1, "iterations_per_epoch": 1, "batch_size": 1},
         "augmentation": {"samples_per_volume": 1}}  # fmt: skip


@pytest.mark.slow
def test_resume_keeps_its_split_and_refuses_when_a_case_of_it_changed(tmp_path, dataset):
    for seed in range(5):
        add_case(dataset, *sphere_case(seed, size=32), NAMES, case_id=f"s{seed}")
    (tmp_path / "quick.json").write_text(json.dumps(QUICK))
    run = tmp_path / "run"
    train = ["train", "--dataset", str(dataset), "--output", str(run), "--device", "cpu", "--threads", "1"]
    first = lesionseg(*train, "--config", str(tmp_path / "quick.json"))
    assert first.returncode == 0, first.stderr
    started = json.loads((run / "split.json").read_text())
    assert started["validation"] and set(started["cases"]) == set(started["train"]) | set(started["validation"])

    # A new case does not move anything: the run goes on with the cases it started with.
    add_case(dataset, *sphere_case(9, size=32), NAMES, case_id="s9")
    resumed = lesionseg(*train, "--resume", "--epochs", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "split.json").read_text()) == started and "not used" in resumed.stderr

    # A validation case saved again with another label: refused, naming it and the way on.
    moved = started["validation"][0]
    image, label = sphere_case(int(moved[1:]), size=32)
    add_case(dataset, image, label.with_array((label.array > 0).astype(np.uint8)), NAMES, case_id=moved)
    refused = lesionseg(*train, "--resume", "--epochs", "3")
    assert refused.returncode == 2 and moved in refused.stderr and "--new-split" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr

    fresh = lesionseg(*train, "--resume", "--new-split", "--epochs", "3")
    assert fresh.returncode == 0, fresh.stderr
    assert "new split" in fresh.stderr
    assert json.loads((run / "split.json").read_text())["cases"][moved]["version"] == 2
