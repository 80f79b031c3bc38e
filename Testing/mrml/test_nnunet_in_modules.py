"""Imported nnU-Net models in the modules, on a real slicer-core scene and real child processes.

The models are real nnU-Net result folders made at test time (``support.nnunet_models``) and imported with
``lesionseg models import``'s own function. The logic lists them in the right module, runs them in a background job
with progress and cancel, loads the result with the sidecar's names and colours, feeds a CT + PET model both of its
volumes (the PET on its own, coarser grid), and passes the advanced nnU-Net options to the run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from support import nnunet_models as nm
from support.processes import alive

slicer = pytest.importorskip("slicer")
pytest.importorskip("nnunetv2")

from lesionseg.image import Image  # noqa: E402
from lesionseg.jobs import JobState  # noqa: E402
from lesionseg.models.nnunet_import import SIDECAR, import_nnunet_model  # noqa: E402
from lesionseg.mrml import (  # noqa: E402
    ensure_segmentation_converters,
    labelmap_from_segmentation_node,
    volume_node_from_image,
)
from LesionSegLib import nnunetmodels, segmenting  # noqa: E402
from LesionSegLib.channels import channel_labels  # noqa: E402

pytestmark = pytest.mark.skipif(os.name == "nt", reason="process checks read /proc")

CT_SHAPE = (22, 38, 42)  # z, y, x at (x, y, z) spacing (1, 1, 2) mm: the PET/CT engine test's case
HOT_CENTRE = np.array([42 * 0.35, 38 * 0.4, 22 * 2.0 * 0.5]) + [6.0, 0.0, 0.0]
HOT_RADIUS = 9.0


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A models folder with three imported nnU-Net models: a lesion model, the same network imported without
    lesion labels (an organ model, for SpleenSeg), and a CT + PET lesion model."""
    build = tmp_path_factory.mktemp("nnunet-build")
    root = tmp_path_factory.mktemp("nnunet-models")
    phantom = nm.build_dataset(build / "phantom", configurations=("3d_fullres",), folds=(0, 1))
    import_nnunet_model(phantom.root, root, "mets-nnunet")  # "lesion" is named like a lesion: lesion label 1
    import_nnunet_model(phantom.root, root, "organs-nnunet", lesion_labels=[])
    pet_ct = nm.build_pet_ct_dataset(build / "petct")
    import_nnunet_model(pet_ct.root, root, "petct-nnunet")
    return root


def make_logic(module: str, lesion: bool, models, work):
    logic = segmenting.SegmentingLogic()
    logic.moduleName, logic.lesionModels = module, lesion
    logic.modelsDir, logic.pythonExecutable, logic.workRoot = models, sys.executable, work
    return logic


@pytest.fixture
def logic(models, tmp_path):
    ensure_segmentation_converters()
    logic = make_logic("ProstateMetSeg", True, models, tmp_path)
    yield logic
    logic.shutdownWorker()


def phantom_ct(scene, shape_zyx=(20, 36, 40), seed=7, name="Pelvis CT"):
    values, truth = nm.phantom(shape_zyx=shape_zyx, seed=seed)
    image = Image(values, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    return volume_node_from_image(scene, image, name), truth


def wait(run, seconds: float = 300.0) -> tuple[list[str], list[float]]:
    """Poll as the panel's timer does; the log lines and the percentages seen."""
    log, percents = [], []
    deadline = time.monotonic() + seconds
    while not run.finished and time.monotonic() < deadline:
        status = run.poll()
        log += status.log
        if status.percent is not None:
            percents.append(status.percent)
        time.sleep(0.05)
    log += run.poll().log
    return log, percents


def test_imported_nnunet_models_are_listed_in_the_module_their_lesion_labels_say(models, tmp_path):
    prostate = make_logic("ProstateMetSeg", True, models, tmp_path)
    spleen = make_logic("SpleenSeg", False, models, tmp_path)
    prostate_ids = [e.spec.id for e in prostate.modelEntries()]
    spleen_ids = [e.spec.id for e in spleen.modelEntries()]
    assert {"mets-nnunet", "petct-nnunet"} <= set(prostate_ids) and "organs-nnunet" not in prostate_ids
    assert "organs-nnunet" in spleen_ids and "mets-nnunet" not in spleen_ids

    entry = prostate.modelEntry("mets-nnunet")
    assert entry.weights_present and entry.verified is True and not entry.problem
    assert segmenting.weights_problem(entry) == ""
    assert "weights verified" in segmenting.describe_entry(entry)
    assert prostate.isNnunetModel(entry) and not spleen.isNnunetModel(spleen.modelEntry("spleen_ct_segmentation"))
    assert [label.name for label in entry.spec.labels] == ["lesion", "bone"]
    assert [label.is_lesion for label in entry.spec.labels] == [True, False]
    # A preselected model is one for patients: an imported model counts as one (not a demo).
    assert segmenting.preselected_model_id(prostate.modelEntries()) in ("mets-nnunet", "petct-nnunet")


def test_a_checkpoint_changed_after_import_shows_in_the_list_and_cannot_run(models, tmp_path):
    logic = make_logic("ProstateMetSeg", True, models, tmp_path)
    checkpoint = models / "mets-nnunet" / next(iter(json.loads((models / "mets-nnunet" / SIDECAR).read_text())
                                                    ["checkpoints"]))  # fmt: skip
    kept = checkpoint.read_bytes()
    try:
        checkpoint.write_bytes(kept[:-5] + b"xxxxx")
        entry = logic.modelEntry("mets-nnunet")
        assert entry.verified is False and "import the model again" in entry.problem
        assert "fail their check" in segmenting.weights_problem(entry)
        scene = slicer.vtkMRMLScene()
        ct, _ = phantom_ct(scene)
        with pytest.raises(ValueError, match="fail their check"):
            logic.startSegmentation(ct, entry, "cpu")
    finally:
        checkpoint.write_bytes(kept)
        os.utime(checkpoint)  # the hash cache keys on size and time: the restored file is hashed again


def test_segmenting_with_an_nnunet_model_reports_progress_and_loads_the_sidecars_labels(logic):
    scene = slicer.vtkMRMLScene()
    ct, truth = phantom_ct(scene)
    entry = logic.modelEntry("mets-nnunet")
    run = logic.startSegmentation(ct, entry, "cpu")
    assert run.worker is None  # a one-shot job of its own, not the warm worker (see LesionSegLib.nnunetmodels)
    log, percents = wait(run)
    assert run.state is JobState.SUCCEEDED, (run.failure(), log)
    assert "Stage: inference" in log and percents[-1] == 100.0
    assert any(0.0 < p < 100.0 for p in percents), percents  # true progress on the way, not a jump to the end
    assert not alive(run.worker_pid)

    node = logic.loadSegmentationResult(run, scene)
    assert node.GetName() == "Pelvis CT – ProstateMetSeg nnU-Net"
    assert node.GetAttribute(segmenting.MODEL_ID_ATTRIBUTE) == "mets-nnunet"
    segments = node.GetSegmentation()
    sidecar = json.loads((logic.modelsDir / "mets-nnunet" / SIDECAR).read_text())
    by_name = {label["name"]: label for label in sidecar["labels"]}
    assert sorted(segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())) == sorted(by_name)
    for index in range(segments.GetNumberOfSegments()):
        segment = segments.GetNthSegment(index)
        np.testing.assert_allclose(segment.GetColor(), by_name[segment.GetName()]["color"], atol=1e-3)
    labels, table = labelmap_from_segmentation_node(node, ct, {"lesion": 1, "bone": 2})
    assert [(label.value, label.name) for label in table] == [(1, "lesion"), (2, "bone")]
    assert labels.same_grid(logic.volumeImage(ct))
    found = labels.array == 1
    assert 2 * (found & (truth == 1)).sum() / (found.sum() + (truth == 1).sum()) > 0.95
    assert not run.work_dir.exists()


def test_the_advanced_options_are_defaulted_from_the_sidecar_and_reach_the_run(logic, models, tmp_path):
    entry = logic.modelEntry("mets-nnunet")
    defaults = nnunetmodels.sidecar_options(entry.spec)
    assert defaults == nnunetmodels.NnunetRunOptions((), "checkpoint_final.pth", "auto", 0.5)

    # A sidecar that records options gives them as the model's defaults.
    sidecar_path = models / "mets-nnunet" / SIDECAR
    kept = sidecar_path.read_text()
    sidecar = json.loads(kept)
    sidecar.update(folds=[1], tile_step_size=0.75, mirroring=True)
    sidecar_path.write_text(json.dumps(sidecar))
    try:
        recorded = nnunetmodels.sidecar_options(logic.modelEntry("mets-nnunet").spec)
    finally:
        sidecar_path.write_text(kept)
    assert recorded == nnunetmodels.NnunetRunOptions(("1",), "checkpoint_final.pth", "on", 0.75)

    scene = slicer.vtkMRMLScene()
    ct, _ = phantom_ct(scene)
    chosen = nnunetmodels.NnunetRunOptions(("1",), "checkpoint_final.pth", "off", 0.9)
    run = logic.startSegmentation(ct, entry, "cpu", nnunetOptions=chosen)
    argv = run.job.argv
    assert argv[argv.index("--folds") + 1 :][:1] == ["1"] and "--no-tta" in argv
    assert argv[argv.index("--tile-step-size") + 1] == "0.9"
    wait(run)
    assert run.state is JobState.SUCCEEDED, run.failure()
    # The engine ran what the panel chose: its result event says so.
    assert run.job.result["nnunet"]["stages"][0]["folds"] == ["1"]
    assert run.job.result["nnunet"]["mirroring"] is False and run.job.result["nnunet"]["tile_step_size"] == 0.9
    run.cleanup()

    # A fold the model lacks fails in one line naming it; nothing is added to the scene.
    bad = logic.startSegmentation(ct, entry, "cpu", nnunetOptions=nnunetmodels.NnunetRunOptions(("4",)))
    wait(bad)
    assert bad.state is JobState.FAILED and "fold(s) 4" in bad.failure() and "\n" not in bad.failure()
    with pytest.raises(ValueError, match="fold numbers"):
        nnunetmodels.parse_folds("0 x")
    with pytest.raises(ValueError, match="nnU-Net model"):
        logic.startSegmentation(ct, entry, "cpu", threshold=0.3)
    # Body crop reaches the nnU-Net run, which reports it.
    cropped = logic.startSegmentation(ct, entry, "cpu", cropBody=True)
    wait(cropped)
    assert cropped.state is JobState.SUCCEEDED, cropped.failure()
    assert "--crop-body" in cropped.job.argv
    assert "body_crop" in cropped.job.result["nnunet"], cropped.job.result
    cropped.cleanup()


def test_cancelling_an_nnunet_run_mid_way_ends_its_process_tree(logic):
    from test_warm_worker_in_modules import gone

    scene = slicer.vtkMRMLScene()
    # Large for the tiny patch, with a fine tile step: thousands of windows, so the run is cancelled inside them.
    ct, _ = phantom_ct(scene, shape_zyx=(40, 128, 128), seed=1, name="Large CT")
    entry = logic.modelEntry("mets-nnunet")
    run = logic.startSegmentation(ct, entry, "cpu", nnunetOptions=nnunetmodels.NnunetRunOptions(tile_step_size=0.1))
    deadline = time.monotonic() + 300
    in_windows = False
    while not in_windows and not run.finished and time.monotonic() < deadline:
        status = run.poll()
        in_windows = status.stage == "inference" and (status.percent or 0.0) > 0.0
        time.sleep(0.02)
    assert in_windows, (run.state, run.failure(), run.status)
    pid = run.worker_pid
    run.cancel()
    run.poll()
    assert run.state is JobState.CANCELLED and run.status.stage == "cancelled"
    assert "nothing was added" in run.failure()
    assert gone(pid)  # the job and everything it started, gone by the time cancel returns (or soon after)
    assert not run.work_dir.exists()


@pytest.fixture
def pet_ct_scene():
    """A CT and a PET of the same patient: the PET coarser, with a larger field of view, and not on the CT's grid;
    and the answer the model gives when the PET lies exactly on the CT's voxels."""
    scene = slicer.vtkMRMLScene()
    ct_values, _ = nm.phantom(shape_zyx=CT_SHAPE, seed=3)
    ct = volume_node_from_image(scene, Image(ct_values, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3)), "Whole-body CT")
    pet_values, spacing, origin = nm.pet_phantom(HOT_CENTRE, HOT_RADIUS, origin=(-29.3, -24.1, -11.2))
    pet = volume_node_from_image(scene, Image(pet_values, spacing, origin, np.eye(3)), "PET AC")
    k, j, i = np.meshgrid(*(np.arange(n) for n in CT_SHAPE), indexing="ij")
    c = HOT_CENTRE
    hot = (i * 1.0 - c[0]) ** 2 + (j * 1.0 - c[1]) ** 2 + (k * 2.0 - c[2]) ** 2 <= HOT_RADIUS**2
    expected = (ct_values > nm.CT_LESION_HU) & hot
    return scene, ct, pet, expected


class Parameters:
    """The fields of a segmentation module's parameter node that the channel and nnU-Net logic reads."""

    inputVolume = None
    channelVolume = None
    nnunetFolds = ""
    nnunetCheckpoint = ""
    nnunetMirroring = "auto"
    nnunetTileStepSize = 0.5


def test_a_ct_pet_model_asks_for_both_volumes_and_segments_with_the_pet_on_its_own_grid(logic, pet_ct_scene):
    scene, ct, pet, expected = pet_ct_scene
    entry = logic.modelEntry("petct-nnunet")
    single = logic.modelEntry("mets-nnunet")
    assert logic.modelChannels(entry) == ["CT", "PET"] and logic.modelChannels(single) == ["CT"]
    assert channel_labels(entry.spec) == ["CT volume:", "PET volume:"]

    parameters = Parameters()
    parameters.inputVolume = ct
    assert "Select the PET volume" in logic.channelsReadiness(parameters, entry)
    assert logic.channelsReadiness(parameters, single) == ""  # a one-channel model needs no second volume
    parameters.channelVolume = ct
    assert "choose the PET image" in logic.channelsReadiness(parameters, entry)
    parameters.channelVolume = None
    logic.applyModelChoice(parameters, entry, scene)  # the volume named PET is preselected for the PET channel
    assert parameters.channelVolume is pet and logic.channelsReadiness(parameters, entry) == ""
    assert logic.channelVolumes(parameters, entry) == [ct, pet] and logic.channelVolumes(parameters, single) == [ct]

    with pytest.raises(ValueError, match=r"takes 2 image\(s\) \(CT, PET\), 1 given"):
        logic.startSegmentation(ct, entry, "cpu")
    volumes = logic.channelVolumes(parameters, entry)
    run = logic.startSegmentation(volumes[0], entry, "cpu", channelVolumes=volumes[1:])
    assert len(run.input_paths) == 2 and run.job.argv.count("--input") == 2
    log, _ = wait(run)
    assert run.state is JobState.SUCCEEDED, (run.failure(), log)
    node = logic.loadSegmentationResult(run, scene)
    labels, _ = labelmap_from_segmentation_node(node, ct)
    assert labels.same_grid(logic.volumeImage(ct))  # the CT's grid, whatever the PET's
    found = labels.array > 0
    ct_only = logic.volumeImage(ct).array > nm.CT_LESION_HU
    # the PET must matter for this test to mean anything
    assert 2 * (ct_only & expected).sum() / (ct_only.sum() + expected.sum()) < 0.75
    assert 2 * (found & expected).sum() / (found.sum() + expected.sum()) > 0.9


def test_nnunet_defaults_are_written_to_the_parameter_node_when_the_model_is_chosen(logic):
    entry = logic.modelEntry("mets-nnunet")
    parameters = Parameters()
    parameters.nnunetFolds, parameters.nnunetCheckpoint, parameters.nnunetTileStepSize = "7", "x.pth", 0.2
    logic.applyModelChoice(parameters, entry, slicer.vtkMRMLScene())
    assert (parameters.nnunetFolds, parameters.nnunetCheckpoint) == ("", "checkpoint_final.pth")
    assert (parameters.nnunetMirroring, parameters.nnunetTileStepSize) == ("auto", 0.5)
    parameters.nnunetFolds, parameters.nnunetMirroring = "0, 1", "on"
    assert logic.nnunetOptions(parameters, entry) == nnunetmodels.NnunetRunOptions(("0", "1"), mirroring="on")
    own = make_logic("SpleenSeg", False, logic.modelsDir, None).modelEntry("spleen_ct_segmentation")
    assert logic.nnunetOptions(parameters, own) is None  # LesionSeg's own models have no nnU-Net options


def write_pet_reading_model(models, model_id: str = "petct-own"):
    """A LesionSeg model (spec ``inputs``: CT, PET) whose answer comes from its PET channel alone: lesion where the
    PET, z-scored over its volume, exceeds 0.5. Its result shows the PET reached it, on the CT's grid."""
    import torch
    from safetensors.torch import save_file

    from lesionseg.models import file_hashes
    from LesionSegLib.selftest import WINDOW_HU, threshold_model_spec, threshold_weights

    cut_hu = WINDOW_HU[0] + 0.5 * (WINDOW_HU[1] - WINDOW_HU[0])  # 0.5 on the scaled axis the weights compare with
    spec = threshold_model_spec(model_id, "lesion", cut_hu)
    spec["network"]["parameters"]["in_channels"] = spec["input_channels"] = 2
    spec["inputs"] = [{"name": "CT"}, {"name": "PET", "modality": "PT"}]
    spec["lesion_labels"] = [1]
    weights = threshold_weights(cut_hu)
    first = weights["convInit.conv.weight"]
    weights["convInit.conv.weight"] = torch.zeros((first.shape[0], 2, *first.shape[2:]))
    weights["convInit.conv.weight"][0, 1, 1, 1, 1] = 1.0  # the PET's voxel, not the CT's
    folder = models / model_id
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "model.safetensors"))
    spec["weights"]["sha256"] = file_hashes(folder / "model.safetensors")["sha256"]
    (folder / "spec.json").write_text(json.dumps(spec), encoding="utf-8")


def test_a_two_channel_lesionseg_model_gets_both_volumes_through_the_warm_worker(tmp_path, pet_ct_scene):
    models = tmp_path / "models"
    models.mkdir()
    write_pet_reading_model(models)
    logic = make_logic("ProstateMetSeg", True, models, tmp_path)
    try:
        scene, ct, pet, _ = pet_ct_scene
        entry = logic.modelEntry("petct-own")
        assert logic.modelChannels(entry) == ["CT", "PET"] and not logic.isNnunetModel(entry)
        parameters = Parameters()
        parameters.inputVolume, parameters.channelVolume = ct, pet
        assert logic.channelsReadiness(parameters, entry) == ""
        volumes = logic.channelVolumes(parameters, entry)
        run = logic.startSegmentation(volumes[0], entry, "cpu", channelVolumes=volumes[1:])
        assert run.worker is not None  # LesionSeg's own models keep the warm worker
        log, _ = wait(run)
        assert run.state is JobState.SUCCEEDED, (run.failure(), log)
        labels, _ = labelmap_from_segmentation_node(logic.loadSegmentationResult(run, scene), ct)
        # The PET's hot sphere on the CT's voxel centres, give or take the linear blur of one PET voxel (2.5 x 2.5 x
        # 3 mm): found where the PET is, and nowhere else (the CT's own bright lesion lies elsewhere).
        k, j, i = np.meshgrid(*(np.arange(n) for n in CT_SHAPE), indexing="ij")
        c = HOT_CENTRE
        distance = np.sqrt((i * 1.0 - c[0]) ** 2 + (j * 1.0 - c[1]) ** 2 + (k * 2.0 - c[2]) ** 2)
        found = labels.array > 0
        assert labels.same_grid(logic.volumeImage(ct))
        assert found[distance <= HOT_RADIUS].all()
        assert not found[distance > HOT_RADIUS + np.linalg.norm([2.5, 2.5, 3.0])].any()
    finally:
        logic.shutdownWorker()


def test_nnunet_packages_offered_on_first_use_are_the_ones_requirements_pin():
    from support.processes import python_without

    from LesionSegLib.segmenting import REQUIREMENTS

    pinned = [line.strip() for line in (Path(__file__).resolve().parents[2] / "requirements" / "nnunet.txt")
              .read_text().splitlines() if line.strip() and not line.startswith("#")]  # fmt: skip
    offered = [requirement for _name, requirement in nnunetmodels.NNUNET_REQUIREMENTS]
    assert offered[: len(pinned)] == pinned
    assert offered[len(pinned) :] == ["python-dateutil>=2.9", "idna>=3.0"]  # imported, left to test.txt there
    assert nnunetmodels.missing_nnunet_requirements() == []  # this Python runs the models above
    names = {name for name, _requirement in REQUIREMENTS}
    assert not names & {name for name, _requirement in nnunetmodels.NNUNET_REQUIREMENTS}
    # A Slicer without nnunetv2: the module offers exactly the missing packages.
    shown = python_without(
        ("nnunetv2", "acvl_utils"),
        "from LesionSegLib import nnunetmodels; print(nnunetmodels.missing_nnunet_requirements())",
    )
    assert shown.strip() == str([("nnunetv2", "nnunetv2==2.8.1"), ("acvl_utils", "acvl-utils==0.2.6")])
