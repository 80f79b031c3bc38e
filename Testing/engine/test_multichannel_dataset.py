"""Multi-channel (CT + PET) datasets: init, add with the PET resampled onto the CT grid, verify, crash safety,
nnU-Net export, and a real training run whose model segments a CT and a PET through our own pipeline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support.training_data import LESION, ORGAN, one_torch_thread, sphere_case  # noqa: F401

from lesionseg.datasets import (
    Dataset,
    add_case,
    add_case_from_files,
    export_nnunet,
    init_dataset,
    remove_case,
    verify_dataset,
)
from lesionseg.datasets.store import PAUSE_ENV, sha256_file
from lesionseg.image import Image
from lesionseg.inference.channels import ChannelError
from lesionseg.io import read_image, write_image
from lesionseg.resample import resample_to

LABELS = {ORGAN: "organ", LESION: "lesion"}


def pet_of(ct: Image, label: Image, offset_mm: float = 10.0) -> Image:
    """A PET of the CT's patient as scanners give it: 3 mm voxels, a smaller field of view shifted by ``offset_mm``,
    hot in the lesion and warm in the organ."""
    uptake = np.where(label.array == LESION, 8.0, np.where(label.array == ORGAN, 2.0, 0.5)).astype(np.float32)
    size = (np.array(ct.size) * ct.spacing / 3.0 * 0.75).astype(int)
    grid = Image(np.zeros(size[::-1], np.float32), (3.0, 3.0, 3.0), ct.origin + offset_mm, ct.direction)
    return resample_to(ct.with_array(uptake), grid, "linear")


def ramp_pet(ct: Image) -> Image:
    """A PET whose value is a linear function of position (so linear resampling is exact), on its own grid."""
    size = (12, 14, 10)
    pet = Image(np.zeros(size[::-1], np.float32), (3.0, 2.5, 3.5), ct.origin + np.array([7.0, -3.0, 5.0]))
    k, j, i = np.indices(pet.array.shape)
    world = pet.world(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1))
    return pet.with_array((100.0 + world @ np.array([1.0, 0.5, -0.25])).reshape(pet.array.shape).astype(np.float32))


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lesionseg", *args], capture_output=True, text=True, timeout=300,
                          env=env)  # fmt: skip


@pytest.fixture
def petct(tmp_path: Path) -> Path:
    root = tmp_path / "petct"
    init_dataset(root, LABELS, name="PetCt", lesion_labels=[LESION], channels=["CT", "PET"])
    return root


def write_case(folder: Path, seed: int, pet: str = "pet") -> tuple[Path, Path, Path]:
    ct, label = sphere_case(seed, size=32)
    paths = folder / f"ct{seed}.nii.gz", folder / f"{pet}{seed}.nii.gz", folder / f"seg{seed}.nii.gz"
    write_image(ct, paths[0])
    write_image(ramp_pet(ct) if pet == "ramp" else pet_of(ct, label), paths[1])
    write_image(label, paths[2])
    return paths


def test_init_records_channel_names_and_a_single_channel_dataset_json_is_as_before(tmp_path: Path) -> None:
    done = cli("dataset", "init", str(tmp_path / "petct"), "--labels", "organ=1,lesion=2", "--channels", "CT,PET")
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "petct" / "dataset.json").read_text())
    assert doc["channel_names"] == {"0": "CT", "1": "PET"} and doc["modality"] == {"0": "CT", "1": "PET"}
    assert Dataset(tmp_path / "petct").channel_names() == ["CT", "PET"]

    single = init_dataset(tmp_path / "ct", LABELS, name="Ct", modality="CT")
    # Exactly the keys, order and bytes a dataset had before channels existed.
    assert single.description_path.read_text() == json.dumps(
        {"name": "Ct", "description": "", "tensorImageSize": "3D", "modality": {"0": "CT"},
         "labels": {"0": "background", "1": "organ", "2": "lesion"}, "lesion_labels": [], "file_ending": ".nii.gz",
         "numTraining": 0, "training": []}, indent=2,
    ) + "\n"  # fmt: skip
    assert single.channel_names() == ["CT"] and single.image_path("c") == tmp_path / "ct" / "imagesTr" / "c.nii.gz"

    for bad, message in (("CT,ct", "channel names repeat"), ("CT,P ET", "channel name 'P ET'")):
        done = cli("dataset", "init", str(tmp_path / "bad"), "--labels", "organ=1", "--channels", bad)
        assert done.returncode != 0 and message in done.stderr, done.stderr
    done = cli("dataset", "init", str(tmp_path / "both"), "--labels", "organ=1", "--channels", "CT,PET",
               "--modality", "CT")  # fmt: skip
    assert done.returncode != 0 and "either --channels" in done.stderr


def test_pet_with_other_spacing_and_field_of_view_lands_on_the_ct_grid(tmp_path: Path, petct: Path) -> None:
    from monai.data import load_decathlon_datalist
    from monai.transforms import LoadImaged

    ct_path, pet_path, seg_path = write_case(tmp_path, 3, pet="ramp")
    done = cli("dataset", "add", "--dataset", str(petct), "--image", str(ct_path), "--image", str(pet_path),
               "--seg", str(seg_path), "--case-id", "p1")  # fmt: skip
    assert done.returncode == 0, done.stderr

    dataset = Dataset(petct)
    ct, pet = read_image(ct_path), read_image(pet_path)
    stored = read_image(petct / "imagesTr" / "p1_0001.nii.gz")
    assert stored.same_grid(ct) and not pet.same_grid(ct)
    assert np.array_equal(read_image(petct / "imagesTr" / "p1_0000.nii.gz").array, ct.array)
    # Linear resampling of a linear function is exact wherever the CT voxel centre lies within the PET's centres.
    k, j, i = np.indices(ct.array.shape)
    centres = ct.world(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1))
    inside_index = pet.index(centres)
    inside = np.all((inside_index >= 0) & (inside_index <= np.array(pet.size) - 1), axis=1)
    outside = np.any((inside_index < -0.5) | (inside_index > np.array(pet.size) - 0.5), axis=1)
    expected = 100.0 + centres @ np.array([1.0, 0.5, -0.25])
    values = stored.array.ravel()
    assert inside.sum() > 500 and outside.sum() > 500
    np.testing.assert_allclose(values[inside], expected[inside], atol=1e-3)
    assert np.all(values[outside] == 0)

    manifest = dataset.manifest()
    files = manifest["cases"]["p1"]["versions"][0]["files"]
    assert sorted(files) == ["image", "image_0001", "label"]
    for role, entry in files.items():
        assert (
            entry["path"] == f"versions/p1/v1/{role}.nii.gz" and sha256_file(petct / entry["path"]) == entry["sha256"]
        )
    provenance = manifest["cases"]["p1"]["versions"][0]["provenance"]
    assert provenance["channel_sources"] == [ct_path.name, pet_path.name]
    doc = json.loads(dataset.description_path.read_text())
    assert doc["training"] == [
        {"image": ["./imagesTr/p1_0000.nii.gz", "./imagesTr/p1_0001.nii.gz"], "label": "./labelsTr/p1.nii.gz",
         "case": "p1"}
    ]  # fmt: skip
    assert verify_dataset(petct).ok

    (entry,) = load_decathlon_datalist(str(dataset.description_path), True, "training")
    loaded = LoadImaged(keys=["image", "label"], image_only=True, ensure_channel_first=True)(entry)
    assert tuple(loaded["image"].shape) == (2, *ct.size) and tuple(loaded["label"].shape) == (1, *ct.size)

    # A new version by --channel NAME=PATH (any order), then removal: every channel file follows.
    done = cli("dataset", "add", "--dataset", str(petct), "--channel", f"PET={pet_path}", "--channel",
               f"ct={ct_path}", "--seg", str(seg_path), "--case-id", "p1", "--note", "again")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert Dataset(petct).manifest()["cases"]["p1"]["current"] == 2 and verify_dataset(petct).ok
    assert sorted(p.name for p in (petct / "versions" / "p1" / "v2").iterdir()) == [
        "image.nii.gz", "image_0001.nii.gz", "label.nii.gz"
    ]  # fmt: skip
    remove_case(petct, "p1")
    assert not list((petct / "imagesTr").iterdir()) and not list((petct / "labelsTr").iterdir())
    assert json.loads(dataset.description_path.read_text())["training"] == [] and verify_dataset(petct).ok


def test_wrong_channel_counts_and_disjoint_channels_are_refused(tmp_path: Path, petct: Path) -> None:
    ct_path, pet_path, seg_path = write_case(tmp_path, 4)
    base = ["dataset", "add", "--dataset", str(petct), "--seg", str(seg_path)]
    done = cli(*base, "--image", str(ct_path))
    assert done.returncode != 0
    assert "channel(s) PET missing: this dataset needs 2 images in the order CT, PET; give --image once per " \
        "channel, or --channel NAME=PATH" in done.stderr, done.stderr  # fmt: skip
    done = cli(*base, "--image", str(ct_path), "--image", str(pet_path), "--image", str(pet_path))
    assert done.returncode != 0 and "3 inputs given but this dataset takes 2 (CT, PET)" in done.stderr
    done = cli(*base, "--channel", f"CT={ct_path}")
    assert done.returncode != 0 and "PET missing" in done.stderr and "--channel PET=PATH" in done.stderr
    done = cli(*base, "--channel", f"MR={ct_path}", "--channel", f"PET={pet_path}")
    assert done.returncode != 0 and "'MR': the dataset has no such channel; its channels are CT, PET" in done.stderr

    ct = read_image(ct_path)
    far = ct.with_array(ct.array.astype(np.float32))
    far.origin = ct.origin + 500.0
    with pytest.raises(ChannelError, match=r"channel 'PET' \(image 2 of 2\) does not overlap channel 'CT'"):
        add_case(petct, [ct, far], read_image(seg_path))
    with pytest.raises(ValueError, match=r"holds 2-channel cases \(CT, PET\) but 1 image\(s\) were given"):
        add_case(petct, ct, read_image(seg_path))
    assert Dataset(petct).manifest()["cases"] == {} and not list((petct / "versions").iterdir())

    # A single-channel dataset refuses a second image the same way.
    single = tmp_path / "ct"
    init_dataset(single, LABELS)
    done = cli("dataset", "add", "--dataset", str(single), "--seg", str(seg_path), "--image", str(ct_path),
               "--image", str(pet_path))  # fmt: skip
    assert done.returncode != 0 and "2 inputs given but this dataset takes 1 (CT)" in done.stderr, done.stderr


def test_verify_finds_a_changed_channel_and_a_channel_off_the_grid(tmp_path: Path, petct: Path) -> None:
    ct_path, pet_path, seg_path = write_case(tmp_path, 5)
    add_case_from_files(petct, [ct_path, pet_path], seg_path, case_id="p5")
    current = petct / "imagesTr" / "p5_0001.nii.gz"
    write_image(read_image(pet_path), current)  # the PET on its own grid, as if copied in by hand
    problems = verify_dataset(petct).problems
    assert any("p5: SHA-256 matches no saved version" in p and "p5_0001.nii.gz" in p for p in problems), problems
    assert any("channel 1 (p5_0001.nii.gz) is not on the first channel's grid" in p for p in problems), problems


def test_export_nnunet_writes_one_file_per_channel(tmp_path: Path, petct: Path) -> None:
    for seed in (6, 7):
        add_case_from_files(petct, list(write_case(tmp_path, seed)[:2]), tmp_path / f"seg{seed}.nii.gz",
                            case_id=f"p{seed}")  # fmt: skip
    done = cli("dataset", "export-nnunet", str(petct), "--output", str(tmp_path / "raw"), "--id", "601")
    assert done.returncode == 0, done.stderr
    target = tmp_path / "raw" / "Dataset601_PetCt"
    assert sorted(p.name for p in (target / "imagesTr").iterdir()) == [
        "p6_0000.nii.gz", "p6_0001.nii.gz", "p7_0000.nii.gz", "p7_0001.nii.gz"
    ]  # fmt: skip
    assert sha256_file(target / "imagesTr" / "p6_0001.nii.gz") == sha256_file(petct / "imagesTr" / "p6_0001.nii.gz")
    assert json.loads((target / "dataset.json").read_text())["channel_names"] == {"0": "CT", "1": "PET"}
    single = tmp_path / "ct"
    init_dataset(single, LABELS)
    add_case(single, *sphere_case(8, size=16), case_id="c8")
    out = export_nnunet(single, tmp_path / "raw", 602)
    assert [p.name for p in (out / "imagesTr").iterdir()] == ["c8_0000.nii.gz"]
    assert json.loads((out / "dataset.json").read_text())["channel_names"] == {"0": "CT"}


# Kill points: between the two channel files of the version; after the commit; with the datalist pointing at the
# version folder; and between publishing the CT and the PET.
STEPS = ["image_0001-written", "manifest-committed", "datalist-points-at-version", "image-published",
         "image_0001-published"]  # fmt: skip


def test_killed_multichannel_saves_leave_a_dataset_that_verifies_and_loads(tmp_path: Path, petct: Path) -> None:
    from monai.data import load_decathlon_datalist
    from monai.transforms import LoadImaged

    saved = []
    ct_path, pet_path, seg_path = write_case(tmp_path, 10)
    add_case_from_files(petct, [ct_path, pet_path], seg_path, case_id="big")
    saved.append((read_image(ct_path).array, read_image(seg_path).array))
    env = {**os.environ, PAUSE_ENV: "0.2"}
    for n, step in enumerate(STEPS):
        ct_path, pet_path, seg_path = write_case(tmp_path, 20 + n)
        saved.append((read_image(ct_path).array, read_image(seg_path).array))
        command = [sys.executable, "-m", "lesionseg", "dataset", "add", "--dataset", str(petct), "--image",
                   str(ct_path), "--image", str(pet_path), "--seg", str(seg_path), "--case-id", "big"]  # fmt: skip
        child = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        for line in child.stderr:
            if line.strip() == f"dataset-step: {step}":
                break
        else:
            raise AssertionError(f"the child ended (code {child.wait()}) before step {step}")
        child.send_signal(signal.SIGKILL)
        child.wait()

        report = verify_dataset(petct)
        assert report.ok, (step, report.problems)
        (entry,) = load_decathlon_datalist(str(petct / "dataset.json"), True, "training")
        loaded = LoadImaged(keys=["image", "label"], image_only=True)(entry)
        ct = np.transpose(np.asarray(loaded["image"])[0], (2, 1, 0))
        label = np.transpose(np.asarray(loaded["label"]), (2, 1, 0))
        # CT, PET and label read are of one saved version: the CT and label of one save, the PET hashed with them.
        assert any(np.array_equal(ct, a) and np.array_equal(label, b) for a, b in saved), step
    # The next write finishes what the last kill left: the datalist names the current copies again.
    done = cli("dataset", "verify", str(petct), "--repair")
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads((petct / "dataset.json").read_text())
    assert doc["training"][0]["image"] == ["./imagesTr/big_0000.nii.gz", "./imagesTr/big_0001.nii.gz"]
    assert verify_dataset(petct).ok and not list(petct.rglob(".*.part*"))


def test_training_transform_scales_channels_as_segment_does() -> None:
    import torch

    from lesionseg.inference.pipeline import _scale_intensity
    from lesionseg.models.spec import IntensitySpec
    from lesionseg.training.data import intensity_transform

    rng = np.random.default_rng(0)
    image = torch.as_tensor(np.stack([rng.normal(40, 60, (6, 7, 8)), rng.gamma(2.0, 1.5, (6, 7, 8))]).astype("f4"))
    window = {"kind": "range", "a_min": -150.0, "a_max": 250.0, "b_min": 0.0, "b_max": 1.0, "clip": True}
    scaled = intensity_transform(window)({"image": image})["image"]
    ct = _scale_intensity(image[0], IntensitySpec(**window))
    pet = _scale_intensity(image[1], IntensitySpec(kind="zscore"))
    np.testing.assert_allclose(np.asarray(scaled[0]), ct.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(scaled[1]), pet.numpy(), atol=1e-4)
    # Not the CT window: that would squeeze these PET values into a sliver of [0, 1].
    assert float(scaled[1].mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(scaled[1].std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    single = intensity_transform(window)({"image": image[:1]})["image"]
    np.testing.assert_allclose(np.asarray(single), np.asarray(scaled[:1]), atol=1e-6)


@pytest.mark.slow
def test_a_two_channel_dataset_trains_and_segment_runs_the_model_on_ct_and_pet(tmp_path: Path) -> None:
    from lesionseg.models.spec import load_spec
    from lesionseg.training import load_config, train

    root = tmp_path / "petct"
    init_dataset(root, LABELS, name="PetCt", lesion_labels=[LESION], channels=["CT", "PET"])
    for seed in range(3):
        ct, label = sphere_case(seed, size=32)
        add_case(root, [ct, pet_of(ct, label)], label, case_id=f"s{seed}")
    config = load_config({"base": "tiny", "training": {"epochs": 1, "batch_size": 2, "amp": False, "seed": 1},
                          "model": {"id": "petct-test"}})  # fmt: skip
    output = tmp_path / "model"
    train(root, config, output)

    spec = load_spec(output / "spec.json")
    assert spec.input_channels == 2 and spec.network_parameters["in_channels"] == 2
    assert [(i.name, i.modality) for i in spec.inputs] == [("CT", "CT"), ("PET", "PT")]
    assert "every further channel is z-scored" in (output / "model-card.md").read_text()
    # The run's split names every channel's file hash, so a resume notices a changed PET.
    split = json.loads((output / "split.json").read_text())
    assert all("image_0001" in each for each in split["cases"].values())

    ct, label = sphere_case(9, size=32)
    write_image(ct, tmp_path / "ct.nii.gz")
    write_image(pet_of(ct, label), tmp_path / "pet.nii.gz")
    out = tmp_path / "seg.nii.gz"
    inputs = ["--input", str(tmp_path / "ct.nii.gz"), "--input", str(tmp_path / "pet.nii.gz")]
    done = cli("segment", "--model", str(output), *inputs, "--output", str(out), "--device", "cpu", "--progress=jsonl")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["inputs"] == {"CT": str(tmp_path / "ct.nii.gz"), "PET": str(tmp_path / "pet.nii.gz")}
    seg = read_image(out)
    assert seg.same_grid(ct) and set(np.unique(seg.array)) <= {0, ORGAN, LESION}


def pet_selecting_model(folder: Path, pet_value: float) -> Path:
    """A hand-set two-channel SegResNet (CT, PET) whose class 1 is exactly where the PET exceeds ``pet_value``
    in z-score units of the run's PET: it ignores the CT, so only a PET fed on the right grid and scaled as the
    rule says gives its answer."""
    from support.tiny_models import threshold_spec_dict, threshold_state, write_model_folder

    spec = threshold_spec_dict("pet-threshold", spacing=None, roi=(16, 16, 16))
    spec["network"]["parameters"]["in_channels"] = 2
    spec.update(input_channels=2, inputs=[{"name": "CT", "modality": "CT"}, {"name": "PET", "modality": "PT"}])
    state = threshold_state(gain=50.0)
    weights = state["convInit.conv.weight"]
    state["convInit.conv.weight"] = weights.new_zeros((weights.shape[0], 2, *weights.shape[2:]))
    state["convInit.conv.weight"][0, 1, 1, 1, 1] = 1.0  # the PET channel's own voxel, nothing of the CT
    state["conv_final.2.conv.bias"][1] = -50.0 * pet_value
    return write_model_folder(folder, spec, state)


def test_segment_feeds_the_pet_on_the_ct_grid_z_scored_to_a_two_channel_model(tmp_path: Path) -> None:
    from lesionseg.inference.channels import ChannelInput, align_channels
    from lesionseg.inference.pipeline import segment_file

    ct, label = sphere_case(11, size=32)
    pet = pet_of(ct, label)
    write_image(ct, tmp_path / "ct.nii.gz")
    write_image(pet, tmp_path / "pet.nii.gz")
    aligned = align_channels([ChannelInput("CT", "ct", ct), ChannelInput("PET", "pet", pet)])[1].array
    mean, std = float(aligned.mean()), float(aligned.std())
    cut = 5.0  # between the organ's uptake (2) and the lesion's (8)
    model = pet_selecting_model(tmp_path / "model", (cut - mean) / std)
    expected = aligned > cut
    for inputs, named in (([tmp_path / "ct.nii.gz", tmp_path / "pet.nii.gz"], ()),
                          ([], [f"pet={tmp_path / 'pet.nii.gz'}", f"CT={tmp_path / 'ct.nii.gz'}"])):  # fmt: skip
        result = segment_file(model, inputs, tmp_path / "seg.nii.gz", "cpu", named_channels=named)
        seg = read_image(result["output"])
        assert seg.same_grid(ct) and result["inputs"]["PET"] == str(tmp_path / "pet.nii.gz")
        # Only voxels whose PET lies on the cut itself may go either way.
        assert expected.sum() > 20 and np.all((seg.array == 1) == expected | (np.abs(aligned - cut) < 1e-3))
    with pytest.raises(ChannelError, match=r"channel\(s\) PET missing: this model needs 2 images"):
        segment_file(model, tmp_path / "ct.nii.gz", tmp_path / "one.nii.gz", "cpu")


def test_the_memory_plan_counts_every_channel_of_a_multi_channel_model(tmp_path: Path) -> None:
    from lesionseg.inference.channels import ChannelInput, align_channels
    from lesionseg.inference.pipeline import _plan_memory, load_model
    from lesionseg.inference.plan import NetworkPlan

    ct, label = sphere_case(11, size=32)
    pet = align_channels([ChannelInput("CT", "ct", ct), ChannelInput("PET", "pet", pet_of(ct, label))])[1]
    model = load_model(pet_selecting_model(tmp_path / "model", 0.0), "cpu")
    plan = NetworkPlan.for_image(ct, model.spec.preprocessing)
    alone, both = _plan_memory(plan, model, False), _plan_memory(plan, model, False, [pet])
    # The PET as held, and its float32 channel of the network input on the network grid.
    assert both.host_bytes - alone.host_bytes == pet.array.nbytes + 4 * int(np.prod(plan.grid.size))


def test_a_ct_series_given_as_the_pet_channel_is_refused(tmp_path: Path) -> None:
    from lesionseg.dicom.write import write_ct_series
    from lesionseg.inference.pipeline import segment_file

    ct, _ = sphere_case(12, size=16)
    write_ct_series(ct, tmp_path / "ct", frame_of_reference_uid="1.2.826.0.1.3680043.2.1125.7")
    model = pet_selecting_model(tmp_path / "model", 1.0)
    with pytest.raises(ChannelError, match=r"channel 'PET' \(.*\) is a CT series, but model 'pet-threshold' takes PT "
                       r"there; give the channels in the order CT, PET"):  # fmt: skip
        segment_file(model, [tmp_path / "ct", tmp_path / "ct"], tmp_path / "seg.nii.gz", "cpu")
