"""nnU-Net v2 result folders as models: ``segment --model Dataset*/...`` equals nnU-Net's own prediction.

The folders are real nnU-Net trained configurations made at test time (Testing/support/nnunet_models.py). The
reference is nnU-Net's own file pipeline, ``nnUNetPredictor.predict_from_files`` (its reader, preprocessing worker,
sliding window and export worker), with the network built by nnU-Net's ``get_network_from_plans`` and the
checkpoints loaded as nnU-Net loads them. ``initialize_from_trained_model_folder`` cannot be the reference here: its
trainer lookup imports torchvision, which does not load beside the CPU torch (requirements/nnunet.txt).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from support import nnunet_models as nm

from lesionseg.inference.nnunet import NnunetOptions, predict_nnunet, segment_file_nnunet
from lesionseg.io import read_image
from lesionseg.models.nnunet import NnunetModelError, load_checkpoint, load_configuration

CPU = "cpu"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> nm.NnunetDataset:
    return nm.build_dataset(tmp_path_factory.mktemp("nnunet"), folds=(0, 1))


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A phantom CT stored with a flipped, non-identity direction and an offset origin, as nnU-Net reads files."""
    image, truth = nm.phantom(shape_zyx=(22, 38, 42), seed=5)
    path = nm.write_case(
        tmp_path_factory.mktemp("case") / "case_0000.nii.gz",
        image,
        origin=(-20.0, 13.0, 40.5),
        direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1),
    )
    return path, truth


def nnunet_reference(
    folder: Path, input_file: Path | list[Path], out_dir: Path, previous_stage_dir: Path | None = None
) -> Path:
    """What nnU-Net's own predictor writes for ``input_file`` (one file per channel: a list), folds 0 and 1
    averaged, no mirroring, step 0.5."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = json.loads((folder / "plans.json").read_text())
    dataset = json.loads((folder / "dataset.json").read_text())
    checkpoints = [
        torch.load(folder / f"fold_{f}" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        for f in (0, 1)
    ]
    manager = PlansManager(plans)
    configuration = manager.get_configuration(checkpoints[0]["init_args"]["configuration"])
    arch = configuration.network_arch_init_kwargs
    network = get_network_from_plans(
        configuration.network_arch_class_name,
        arch,
        configuration.network_arch_init_kwargs_req_import,
        determine_num_input_channels(manager, configuration, dataset),
        manager.get_label_manager(dataset).num_segmentation_heads,
        deep_supervision=False,
    )
    network.load_state_dict(checkpoints[0]["network_weights"])
    predictor = nnUNetPredictor(
        tile_step_size=0.5, use_mirroring=False, perform_everything_on_device=False, device=torch.device("cpu")
    )
    predictor.manual_initialization(
        network,
        manager,
        configuration,
        [c["network_weights"] for c in checkpoints],
        dataset,
        checkpoints[0]["trainer_name"],
        checkpoints[0]["inference_allowed_mirroring_axes"],
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [str(f) for f in input_file] if isinstance(input_file, list) else [str(input_file)]
    predictor.predict_from_files(
        [files],
        str(out_dir),
        num_processes_preprocessing=1,
        num_processes_segmentation_export=1,
        folder_with_segs_from_prev_stage=None if previous_stage_dir is None else str(previous_stage_dir),
    )
    return out_dir / "case.nii.gz"


def dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    total = x.sum() + y.sum()
    return 1.0 if total == 0 else float(2 * (x & y).sum() / total)


def assert_same_as_nnunet(ours_path: Path, reference_path: Path, truth: np.ndarray) -> None:
    ours, reference = sitk.ReadImage(str(ours_path)), sitk.ReadImage(str(reference_path))
    for name in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert np.allclose(getattr(ours, name)(), getattr(reference, name)(), atol=1e-4), name
    a, b = sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(reference)
    for label in (1, 2):
        assert dice(a, b, label) >= 0.999, f"label {label}: Dice {dice(a, b, label):.4f} against nnU-Net"
        # Not noise: the hand-set network finds the phantom's lesion and bone.
        assert dice(a, truth, label) > 0.9, f"label {label}: Dice {dice(a, truth, label):.3f} against the truth"


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_segment_with_a_trained_configuration_folder_equals_nnunet_predictor(dataset, case, tmp_path, configuration):
    input_file, truth = case
    folder = dataset.configuration(configuration)
    events: list[dict] = []
    result = segment_file_nnunet(folder, input_file, tmp_path / "ours.nii.gz", CPU, events.append)
    reference = nnunet_reference(folder, input_file, tmp_path / "reference")
    assert_same_as_nnunet(tmp_path / "ours.nii.gz", reference, truth)
    assert result["nnunet"]["stages"][0]["folds"] == ["0", "1"]  # every fold present, averaged
    assert result["nnunet"]["mirroring"] is False  # off on the CPU by default
    stages = [e["stage"] for e in events if e["event"] == "stage"]
    assert stages == ["load", "preprocess", "inference", "postprocess", "write"]
    windows = [e for e in events if e["event"] == "progress" and "windows_total" in e]
    assert windows and windows[-1]["windows_done"] == windows[-1]["windows_total"]
    percents = [e["percent"] for e in events if e["event"] == "progress"]
    assert percents == sorted(percents) and percents[-1] == 100.0
    assert [label["name"] for label in result["labels"]] == ["lesion", "bone"]


def test_an_oblique_input_segments_as_nnunet_reads_it_and_the_labels_lie_on_its_grid(dataset, tmp_path):
    """An oblique CT (rotated 20 degrees about z, off-origin): nnU-Net's reader takes the array as stored, and so
    does an 'as stored' model here; the labelmap has the input's own oblique geometry."""
    image, truth = nm.phantom(shape_zyx=(22, 38, 42), seed=9)
    c, s = np.cos(np.radians(20.0)), np.sin(np.radians(20.0))
    oblique = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    input_file = nm.write_case(tmp_path / "case" / "case_0000.nii.gz", image, origin=(7.5, -3.0, 21.0),
                               direction=oblique)  # fmt: skip
    folder = dataset.configuration("3d_fullres")
    segment_file_nnunet(folder, input_file, tmp_path / "ours.nii.gz", CPU)
    reference = nnunet_reference(folder, input_file, tmp_path / "reference")
    assert_same_as_nnunet(tmp_path / "ours.nii.gz", reference, truth)
    ours = sitk.ReadImage(str(tmp_path / "ours.nii.gz"))
    assert np.allclose(ours.GetDirection(), oblique, atol=1e-6) and np.allclose(ours.GetOrigin(), (7.5, -3.0, 21.0))
    # Imported as RAS: a 20-degree tilt keeps the storage axes nearest to R, A, S, so the model sees the same array
    # and answers the same, on the same oblique grid.
    from lesionseg.models.nnunet_import import import_nnunet_model

    ras = import_nnunet_model(dataset.root, tmp_path / "models", "ras", orientation="RAS")
    labels, _, info = predict_nnunet(read_image(input_file), ras, device=CPU)
    assert info["orientation"] == "RAS" and labels.same_grid(read_image(input_file))
    assert np.array_equal(labels.array, read_image(tmp_path / "ours.nii.gz").array)


def test_cascade_runs_lowres_then_fullres_as_nnunet_does(dataset, case, tmp_path):
    input_file, truth = case
    lowres_reference = nnunet_reference(dataset.configuration("3d_lowres"), input_file, tmp_path / "lowres")
    reference = nnunet_reference(
        dataset.configuration("3d_cascade_fullres"), input_file, tmp_path / "cascade", lowres_reference.parent
    )
    events: list[dict] = []
    result = segment_file_nnunet(
        dataset.root, input_file, tmp_path / "ours.nii.gz", CPU, events.append, NnunetOptions("3d_cascade_fullres")
    )
    assert [s["configuration"] for s in result["nnunet"]["stages"]] == ["3d_lowres", "3d_cascade_fullres"]
    assert_same_as_nnunet(tmp_path / "ours.nii.gz", reference, truth)
    assert any("cascade: 3d_lowres first" in e.get("text", "") for e in events)


def test_a_ct_pet_cascade_runs_both_stages_on_both_channels_as_nnunet_does(case, tmp_path):
    """The cascade feeds every channel to each stage (and the first stage's labels to the second)."""
    dataset = nm.build_pet_ct_cascade(tmp_path / "models")
    ct_file, truth = case
    ct = sitk.ReadImage(str(ct_file))
    # PET on the CT's grid (nnU-Net's reader wants one grid): hot in the half of the volume with the larger i.
    pet = np.zeros(sitk.GetArrayFromImage(ct).shape, np.float32)
    pet[:, :, pet.shape[2] // 2 :] = 12.0
    pet_image = sitk.GetImageFromArray(pet)
    pet_image.CopyInformation(ct)
    pet_file = tmp_path / "case" / "case_0001.nii.gz"
    pet_file.parent.mkdir()
    sitk.WriteImage(pet_image, str(pet_file))
    inputs = [tmp_path / "case" / "case_0000.nii.gz", pet_file]
    sitk.WriteImage(ct, str(inputs[0]))
    lowres = nnunet_reference(dataset.configuration("3d_lowres"), inputs, tmp_path / "lowres")
    reference = nnunet_reference(
        dataset.configuration("3d_cascade_fullres"), inputs, tmp_path / "cascade", lowres.parent
    )
    result = segment_file_nnunet(
        dataset.root, inputs, tmp_path / "ours.nii.gz", CPU, None, NnunetOptions("3d_cascade_fullres")
    )
    assert [s["configuration"] for s in result["nnunet"]["stages"]] == ["3d_lowres", "3d_cascade_fullres"]
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ours.nii.gz")))
    theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(reference)))
    for label in (1, 2):
        assert dice(ours, theirs, label) >= 0.999, f"label {label}: Dice {dice(ours, theirs, label):.4f}"
    # The PET matters: where it is hot, background turns lesion, so the answer is not the CT's alone.
    assert (ours == 1).sum() > (truth == 1).sum() * 1.5


def test_dataset_folder_runs_3d_fullres_unless_a_configuration_is_named(dataset, case):
    input_file, _ = case
    image = read_image(input_file)
    _, _, info = predict_nnunet(image, dataset.root, device=CPU)
    assert info["configuration"] == "3d_fullres"
    _, _, info = predict_nnunet(image, dataset.root, NnunetOptions("2d", folds=["1"]), device=CPU)
    assert info["configuration"] == "2d" and info["stages"][0]["folds"] == ["1"]
    with pytest.raises(NnunetModelError, match="no '3d_fullres_typo' configuration; it has 2d, 3d_cascade_fullres"):
        predict_nnunet(image, dataset.root, NnunetOptions("3d_fullres_typo"), device=CPU)
    with pytest.raises(NnunetModelError, match="fold\\(s\\) 7 have no checkpoint_final.pth; folds present: 0, 1"):
        predict_nnunet(image, dataset.root, NnunetOptions(folds=["7"]), device=CPU)


def test_cascade_without_its_first_stage_is_refused_naming_it(tmp_path, case):
    only = nm.build_dataset(tmp_path, configurations=("3d_cascade_fullres",))
    image = read_image(case[0])
    with pytest.raises(
        NnunetModelError, match="first stage '3d_lowres' is missing.*nnUNetTrainer__nnUNetPlans__3d_low"
    ):
        predict_nnunet(image, only.configuration("3d_cascade_fullres"), device=CPU)


def test_checkpoint_that_would_run_code_is_refused(dataset, tmp_path):
    import torch

    folder = dataset.configuration("3d_fullres")
    checkpoint = load_checkpoint(folder / "fold_0" / "checkpoint_final.pth")  # numpy scalars load safely
    assert isinstance(checkpoint["logging"]["mean_fg_dice"][0], np.float64)
    checkpoint["logging"]["hook"] = os.system  # what a malicious checkpoint pickles
    bad = tmp_path / "checkpoint_final.pth"
    torch.save(checkpoint, bad)
    with pytest.raises(NnunetModelError, match=r"refused to load: it holds .*system.*weights_only=True"):
        load_checkpoint(bad)


def test_plans_naming_a_class_outside_the_network_packages_is_refused(dataset, tmp_path):
    import shutil

    folder = tmp_path / nm.DATASET / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    shutil.copytree(dataset.configuration("3d_fullres"), folder)
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["nonlin"] = "os.system"
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(NnunetModelError, match="nonlin 'os.system' is not allowed"):
        load_configuration(folder).build_network()


def test_background_job_segments_with_an_nnunet_dataset_folder(dataset, case, tmp_path):
    """The modules' background job (a `lesionseg segment --progress jsonl` child) with nnU-Net options."""
    from lesionseg.jobs.runner import EventKind, Job, JobState

    input_file, truth = case
    output = tmp_path / "seg.nii.gz"
    job = Job.segment(str(dataset.root), input_file, output, "cpu", extra=["--configuration", "2d", "--folds", "0"])
    assert job.start().wait(600) is JobState.SUCCEEDED, job.stderr_text[-2000:]
    events = job.poll()
    assert not [e for e in events if e.kind is EventKind.OUTPUT]  # nnU-Net's prints stay off stdout
    stages = [e.data["stage"] for e in events if e.kind is EventKind.STAGE]
    assert stages == ["load", "preprocess", "inference", "postprocess", "write"]
    result = next(e.data for e in events if e.kind is EventKind.RESULT)
    assert result["engine"] == "nnunet" and result["nnunet"]["configuration"] == "2d"
    assert result["nnunet"]["stages"][0]["folds"] == ["0"]
    assert dice(sitk.GetArrayFromImage(sitk.ReadImage(str(output))), truth, 1) > 0.9
    refused = Job.segment(str(dataset.root), input_file, tmp_path / "other.nii.gz", "cpu", extra=["--threshold", "0.3"])
    assert refused.start().wait(600) is JobState.FAILED
    error = next(e.data for e in refused.poll() if e.kind is EventKind.ERROR)
    assert "--threshold applies to LesionSeg's own models" in error["text"]


def test_missing_nnunet_package_or_checkpoint_name_is_one_clear_error(dataset, case, monkeypatch):
    image = read_image(case[0])
    with pytest.raises(
        NnunetModelError, match="no fold_\\*/checkpoint_best.pth; give --checkpoint checkpoint_final.pth"
    ):
        predict_nnunet(image, dataset.root, NnunetOptions(checkpoint="checkpoint_best.pth"), device=CPU)
    with pytest.raises(NnunetModelError, match="tile step size 0 is out of range"):
        predict_nnunet(image, dataset.root, NnunetOptions(tile_step_size=0), device=CPU)
    monkeypatch.setitem(sys.modules, "nnunetv2.inference.predict_from_raw_data", None)  # as where it is not installed
    with pytest.raises(NnunetModelError, match="need the nnunetv2 package.*--no-deps -r requirements/nnunet.txt"):
        predict_nnunet(image, dataset.root, device=CPU)
