"""Segmenting images: geometry in physical space, equality with MONAI's canonical pipeline, crops, outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from support.geometries import rotation
from support.tiny_models import (
    dice,
    phantom_ct,
    sphere_label,
    threshold_spec_dict,
    threshold_state,
    trained_unet_state,
    write_model_folder,
)

from lesionseg.image import Image
from lesionseg.inference import segment_file, segment_image
from lesionseg.inference.memory import GIB, plan_memory
from lesionseg.inference.window import sliding_window
from lesionseg.io import read_image, write_image
from lesionseg.io.sitk import from_sitk, to_sitk
from lesionseg.models import load_spec
from lesionseg.orientation import reorient

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def threshold_model(tmp_path_factory):
    """Native-spacing threshold model: its labelmap must equal (HU > 100) voxel for voxel."""
    folder = tmp_path_factory.mktemp("models") / "threshold"
    return write_model_folder(folder, threshold_spec_dict(spacing=None, roi=(64, 64, 64)), threshold_state())


@pytest.fixture(scope="session")
def resampling_threshold_model(tmp_path_factory):
    """The same network behind a 1.5×1.5×2 mm target grid, so resampling and inversion are exercised."""
    folder = tmp_path_factory.mktemp("models") / "threshold_resampled"
    return write_model_folder(folder, threshold_spec_dict(spacing=(1.5, 1.5, 2.0)), threshold_state())


@pytest.fixture(scope="session")
def spleen_like_model(tmp_path_factory):
    """The built-in spleen spec (network, preprocessing, window) as MONAI runs it, with UNet weights trained here."""
    spec = json.loads(
        __import__("importlib.resources", fromlist=["files"])
        .files("lesionseg.resources")
        .joinpath("models/spleen_ct_segmentation.json")
        .read_text()
    )
    spec["id"] = "spleen_like"
    # MONAI's canonical pipeline is the reference here, and it does not compensate the Decathlon quirk
    spec["preprocessing"]["orientation_quirk"] = "reproduce_monai"
    spec["weights"] = {"format": "state_dict", "path": "model.pt", "sha256": None}
    folder = tmp_path_factory.mktemp("models") / "spleen_like"
    return write_model_folder(folder, spec, trained_unet_state(steps=20))


def physical_labels(label: Image, reference: Image) -> np.ndarray:
    """A binary ``label`` resampled onto ``reference``'s grid: linear, then cut at one half (sub-voxel boundary)."""
    moving = to_sitk(label.with_array(label.array.astype(np.float32)))
    out = sitk.Resample(moving, to_sitk(reference), sitk.Transform(), sitk.sitkLinear, 0.0)
    return (from_sitk(out).array > 0.5).astype(np.uint8)


def test_segment_equals_thresholded_input_voxel_for_voxel(threshold_model):
    ct = phantom_ct()
    labelmap, labels = segment_image(ct, str(threshold_model), device="cpu")
    assert labelmap.same_grid(ct)
    assert labelmap.array.dtype == np.uint8
    np.testing.assert_array_equal(labelmap.array, sphere_label(ct))
    assert [label.name for label in labels] == ["dense"]


@pytest.mark.parametrize("code", ["LPS", "RAS", "SLP", "IRA", "PSL"])
def test_segment_permuted_or_flipped_copy_gives_identical_labels(resampling_threshold_model, code):
    ct = phantom_ct(spacing=(1.3, 1.1, 2.4), direction=np.diag([-1.0, 1.0, 1.0]))
    reference, _ = segment_image(ct, str(resampling_threshold_model), device="cpu")
    copy = reorient(ct, code)
    labelmap, _ = segment_image(copy, str(resampling_threshold_model), device="cpu")
    assert labelmap.same_grid(copy), "the output must lie on the input's own grid"
    back = reorient(labelmap, "LPS")
    np.testing.assert_array_equal(reorient(reference, "LPS").array, back.array)
    assert dice(reference.array, sphere_label(ct)) > 0.98


def test_segment_oblique_copy_matches_in_physical_space(threshold_model):
    # Fine voxels against the blob's size: the two grids' discretisations must differ by under 1 % in Dice.
    grid = dict(shape_kji=(64, 96, 96), spacing=(0.6, 0.6, 0.8), blob_radii_mm=(22.0, 18.0, 20.0), air_margin=False)
    ct = phantom_ct(**grid)
    centre = ct.world((np.array(ct.size) - 1) / 2.0)
    oblique_dir = rotation("x", 25) @ rotation("z", 35)
    # A fresh sampling of the same analytic phantom on a rotated grid centred on the same point.
    probe = Image(np.zeros(grid["shape_kji"], np.int16), grid["spacing"], np.zeros(3), oblique_dir)
    origin = centre - probe.world((np.array(probe.size) - 1) / 2.0)
    oblique = phantom_ct(**grid, origin=origin, direction=oblique_dir, centre_lps=centre)
    straight, _ = segment_image(ct, str(threshold_model), device="cpu")
    tilted, _ = segment_image(oblique, str(threshold_model), device="cpu")
    assert tilted.same_grid(oblique)
    # Exact on its own grid, but for float32 rounding of values within ~1e-5 HU of the threshold.
    assert np.count_nonzero(tilted.array != sphere_label(oblique)) <= 3
    back = physical_labels(tilted, straight)
    inside = physical_labels(oblique.with_array(np.ones(oblique.array.shape, np.uint8)), straight) > 0
    assert dice(back[inside], straight.array[inside]) >= 0.99


def monai_canonical(nifti_path, spec, state, timings: dict | None = None):
    """The bundle's own pipeline from MONAI's dictionary transforms: the reference we must equal."""
    import time

    from monai.inferers import SlidingWindowInferer
    from monai.networks.nets import UNet
    from monai.transforms import (
        Activationsd,
        AsDiscreted,
        Compose,
        EnsureChannelFirstd,
        Invertd,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
    )

    pre, inten = spec.preprocessing, spec.preprocessing.intensity
    preprocessing = Compose(
        [
            LoadImaged("image"),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes=pre.orientation, labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            Spacingd("image", pixdim=pre.spacing, mode="bilinear"),
            ScaleIntensityRanged(
                "image", a_min=inten.a_min, a_max=inten.a_max, b_min=inten.b_min, b_max=inten.b_max, clip=inten.clip
            ),
        ]
    )
    network = UNet(**spec.network_parameters)
    network.load_state_dict(state)
    network.eval()
    inferer = SlidingWindowInferer(
        roi_size=spec.inference.roi_size, sw_batch_size=spec.inference.sw_batch_size, overlap=spec.inference.overlap
    )
    clock = [time.perf_counter()]
    data = preprocessing({"image": str(nifti_path)})
    clock.append(time.perf_counter())
    with torch.no_grad():
        data["pred"] = inferer(data["image"][None], network)[0]
    clock.append(time.perf_counter())
    postprocessing = Compose(
        [
            Activationsd("pred", softmax=True),
            Invertd("pred", transform=preprocessing, orig_keys="image", nearest_interp=False, to_tensor=True),
            AsDiscreted("pred", argmax=True),
        ]
    )
    labels = postprocessing(data)["pred"][0].numpy()
    clock.append(time.perf_counter())
    if timings is not None:
        timings.update(
            zip(("load+preprocess", "inference", "invert+argmax"), np.diff(clock).round(2).tolist(), strict=True)
        )
    return labels


@pytest.mark.slow
def test_segment_equals_monai_canonical_pipeline_with_spleen_spec(spleen_like_model, tmp_path):
    # LPS storage, so MONAI's Orientation has to flip; spacing differs from the spec's in every axis.
    ct = phantom_ct(shape_kji=(64, 96, 96), spacing=(1.6, 1.6, 2.5), origin=(40.0, -30.0, 12.0))
    source = write_image(ct, tmp_path / "ct.nii.gz")
    ours = segment_file(str(spleen_like_model), source, tmp_path / "ours.nii.gz", device="cpu")
    labelmap = read_image(ours["output"])
    spec = load_spec(spleen_like_model / "spec.json")
    reference = monai_canonical(source, spec, torch.load(spleen_like_model / "model.pt", weights_only=True))
    ours_ijk = labelmap.array.transpose(2, 1, 0)
    assert ours_ijk.shape == reference.shape
    assert reference.sum() > 1000, "the trained network must find the blob, or the comparison means nothing"
    assert dice(ours_ijk, reference) >= 0.999
    assert dice(labelmap.array, sphere_label(ct)) > 0.5  # and it roughly finds what it was trained on


def test_window_loop_equals_monai_sliding_window_inference():
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    network = torch.nn.Conv3d(1, 3, 3, padding=1).eval()
    volume_ijk = torch.randn(1, 1, 40, 27, 19)  # smaller than the ROI along k: padding path
    for blend in ("constant", "gaussian"):
        expected = sliding_window_inference(volume_ijk, (16, 16, 24), 3, network, overlap=0.4, mode=blend)
        ours = sliding_window(volume_ijk[0].permute(0, 3, 2, 1), network, (16, 16, 24), 3, 0.4, 3, blend).logits
        torch.testing.assert_close(ours.permute(0, 3, 2, 1), expected[0].detach(), atol=1e-5, rtol=1e-5)
    # Windows of constant input (air) are computed once and reused: still MONAI's result.
    volume_ijk[..., 20:, :, :] = 0.0
    expected = sliding_window_inference(volume_ijk, (8, 8, 8), 3, network, overlap=0.25)
    ours = sliding_window(volume_ijk[0].permute(0, 3, 2, 1), network, (8, 8, 8), 3, 0.25, 4)
    assert ours.computed == ours.windows - 45 + 1  # 45 windows lie in the zeros; one of them runs
    torch.testing.assert_close(ours.logits.permute(0, 3, 2, 1), expected[0].detach(), atol=1e-5, rtol=1e-5)


def test_flip_tta_averages_the_flipped_predictions():
    torch.manual_seed(1)
    network = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    volume_ijk = torch.randn(1, 1, 12, 10, 8)
    with torch.no_grad():
        expected = sum(network(volume_ijk.flip(d)).flip(d) for d in ((), (2,), (3,), (4,))) / 4
    ours = sliding_window(volume_ijk[0].permute(0, 3, 2, 1), network, (12, 10, 8), 2, 0.25, flip_tta=True).logits
    torch.testing.assert_close(ours.permute(0, 3, 2, 1), expected[0], atol=1e-5, rtol=1e-5)


def test_text_progress_bar_draws_on_stderr():
    import io

    from lesionseg.commands.segment import TextBar
    from lesionseg.inference.progress import Progress

    stream = io.StringIO()
    progress = Progress(TextBar(stream))
    progress.stage("load")
    progress.stage("inference")
    progress.update(0.5)
    progress.warning("careful")
    assert "50.0% inference" in stream.getvalue() and "warning: careful" in stream.getvalue()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_with_amp_matches_cpu(resampling_threshold_model):
    ct = phantom_ct()
    on_cpu, _ = segment_image(ct, str(resampling_threshold_model), device="cpu")
    on_gpu, _ = segment_image(ct, str(resampling_threshold_model), device="cuda")
    assert dice(on_cpu.array, on_gpu.array) >= 0.999


def test_body_crop_gives_the_same_labels(resampling_threshold_model):
    # A small body in a wide field of view, its dense blob inside it.
    ct = phantom_ct(
        shape_kji=(40, 100, 100), spacing=(1.4, 1.4, 2.0), body_radii_mm=(20.0, 18.0, 30.0), blob_radii_mm=(12, 10, 14)
    )
    full_events, crop_events = [], []
    full, _ = segment_image(ct, str(resampling_threshold_model), device="cpu", progress=full_events.append)
    cropped, _ = segment_image(
        ct, str(resampling_threshold_model), device="cpu", crop_body=True, progress=crop_events.append
    )
    assert any("body crop" in e.get("text", "") for e in crop_events)

    def windows(events):
        return max(e.get("windows_total", 0) for e in events)

    assert windows(crop_events) < windows(full_events), "the crop must skip windows"
    np.testing.assert_array_equal(full.array, cropped.array)


def test_compensate_quirk_feeds_the_network_mirrored_axes(spleen_like_model, tmp_path):
    spec = json.loads((spleen_like_model / "spec.json").read_text())
    spec["preprocessing"]["spacing"] = None  # no resampling: the flip is the only difference
    spec["inference"]["roi_size"] = [32, 32, 32]
    reproduce = write_model_folder(tmp_path / "reproduce", spec, torch.load(spleen_like_model / "model.pt"))
    spec["preprocessing"]["orientation_quirk"] = "compensate"
    compensate = write_model_folder(tmp_path / "compensate", spec, torch.load(spleen_like_model / "model.pt"))
    ct = reorient(phantom_ct(shape_kji=(32, 40, 40), spacing=(1.5, 1.5, 2.0)), "RAS")
    mirrored = ct.with_array(np.ascontiguousarray(ct.array[:, ::-1, ::-1]))  # tensor axes i and j flipped
    compensated, _ = segment_image(ct, str(compensate), device="cpu")
    as_monai, _ = segment_image(mirrored, str(reproduce), device="cpu")
    np.testing.assert_array_equal(compensated.array, as_monai.array[:, ::-1, ::-1])


def test_memory_plan_fits_a_512x512x800_ct_on_8gb_gpu_and_16gb_ram():
    # 512×512×800 at 0.7×0.7×1.0 mm on the spleen grid (1.5×1.5×2.0): 239×239×400 voxels.
    target = 239 * 239 * 400
    source = 512 * 512 * 800
    gpu = plan_memory(target, 2, (96, 96, 96), 4, "cuda", 8 * GIB, 16 * GIB, input_voxels=source)
    assert gpu.fits and gpu.stitch_on_device and gpu.sw_batch_size == 4
    assert gpu.device_bytes < 8 * GIB * 0.8
    cpu = plan_memory(target, 2, (96, 96, 96), 4, "cpu", 0, 16 * GIB, input_voxels=source, amp=False)
    assert cpu.fits and cpu.host_bytes < 16 * GIB
    # 105 classes do not fit beside the network on 8 GB: stitching moves to host RAM, batch shrinks.
    many = plan_memory(target, 105, (96, 96, 96), 4, "cuda", 8 * GIB, 64 * GIB, input_voxels=source)
    assert many.fits and not many.stitch_on_device
    tight = plan_memory(target, 2, (96, 96, 96), 4, "cuda", GIB // 2, 16 * GIB, input_voxels=source)
    assert tight.sw_batch_size < 4 or not tight.stitch_on_device
    assert not plan_memory(target, 2, (96, 96, 96), 4, "cpu", 0, 1 * GIB, input_voxels=source).fits


def test_missing_gpu_index_is_a_clear_error(threshold_model):
    with pytest.raises(ValueError, match="cuda:1"):
        segment_image(phantom_ct(), str(threshold_model), device="cuda:1")


def test_postprocessing_keeps_largest_component_and_fills_holes(tmp_path):
    from lesionseg.inference.postprocess import postprocess
    from lesionseg.models.spec import PostprocessSpec

    array = np.zeros((20, 20, 20), np.uint8)
    array[2:12, 2:12, 2:12] = 1
    array[6, 6, 6] = 0  # a hole
    array[15:17, 15:17, 15:17] = 1  # a small island, 8 voxels
    image = Image(array, (2.0, 2.0, 2.0))
    kept = postprocess(image, PostprocessSpec(keep_largest_component=True, fill_holes=True))
    assert kept.array[6, 6, 6] == 1 and kept.array[16, 16, 16] == 0
    by_volume = postprocess(image, PostprocessSpec(min_component_mm3=8 * 8.0 + 1))
    assert by_volume.array[16, 16, 16] == 0 and by_volume.array[6, 6, 6] == 0 and by_volume.array[3, 3, 3] == 1


def test_seg_nrrd_loads_in_slicer_with_named_coloured_segments(threshold_model, tmp_path):
    slicer = pytest.importorskip("slicer")
    from lesionseg.mrml import ensure_segmentation_converters, image_from_volume_node

    ct = phantom_ct(direction=rotation("z", 20), origin=(5.0, -7.0, 3.0))
    result = segment_file(str(threshold_model), write_image(ct, tmp_path / "ct.nrrd"), tmp_path / "out.seg.nrrd", "cpu")
    ensure_segmentation_converters()
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(result["output"])
    assert storage.ReadData(node), "Slicer could not read the .seg.nrrd"
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    segment = segmentation.GetNthSegment(0)
    assert segment.GetName() == "dense"
    np.testing.assert_allclose(segment.GetColor(), (0.9, 0.2, 0.1), atol=1e-4)
    labelmap_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    reference = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    from lesionseg.mrml import volume_node_from_image

    volume_node_from_image(scene, ct, "ct", node=reference, display=False)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportAllSegmentsToLabelmapNode(node, labelmap_node, 0)
    exported = image_from_volume_node(labelmap_node)
    back = physical_labels(exported, ct) if not exported.same_grid(ct) else exported.array
    np.testing.assert_array_equal(back > 0, sphere_label(ct) > 0)


def test_segment_cli_in_a_background_job_reports_progress_and_result(threshold_model, tmp_path):
    from lesionseg.jobs import EventKind, Job, JobState

    source = write_image(phantom_ct(), tmp_path / "ct.nii.gz")
    out = tmp_path / "labels.seg.nrrd"
    job = Job.segment(str(threshold_model), source, out, device="cpu").start()  # `segment ... --progress jsonl`
    assert job.wait(120) is JobState.SUCCEEDED, job.stderr_text
    events = [e.data for e in job.poll() if e.kind is not EventKind.FINISHED]
    percents = [e["percent"] for e in events if e["event"] == "progress"]
    assert percents == sorted(percents) and percents[-1] == 100.0
    stages = [e["stage"] for e in events if e["event"] == "stage"]
    assert stages == ["load", "preprocess", "inference", "postprocess", "write"]
    assert any(e.get("windows_total") for e in events), "progress must follow the window loop"
    assert events[-1]["event"] == "result" and job.result["output"] == str(out)
    np.testing.assert_array_equal(read_image(out).array, sphere_label(phantom_ct()))


def test_bad_output_name_is_refused_before_any_work(threshold_model, tmp_path):
    with pytest.raises(ValueError, match=".seg.nrrd"):
        segment_file(str(threshold_model), tmp_path / "missing.nii.gz", tmp_path / "labels.png", device="cpu")


def test_segment_reads_a_dicom_series_folder(threshold_model, tmp_path):
    from lesionseg.dicom.write import write_ct_series

    ct = phantom_ct(direction=np.diag([1.0, -1.0, -1.0]))
    ct = ct.with_array(np.round(ct.array).astype(np.int16))
    write_ct_series(ct, tmp_path / "series", reverse_file_order=True)
    result = segment_file(str(threshold_model), tmp_path / "series", tmp_path / "labels.nrrd", device="cpu")
    labelmap = read_image(result["output"])
    assert labelmap.same_grid(ct)
    np.testing.assert_array_equal(labelmap.array, sphere_label(ct))


def test_oblique_grid_is_reoriented_and_resampled_exactly_as_monai(tmp_path):
    import nibabel as nib
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd
    from scipy.spatial.transform import Rotation

    from lesionseg.inference.axes import monai_reorientation, permute_axes
    from lesionseg.inference.network_grid import axis_map, grid_starts, resample_separable, target_shape_ijk
    from lesionseg.orientation import orientation_code

    # A strongly oblique grid on which nibabel's axis choice differs from the engine's orientation_code.
    def ras_codes(direction):
        affine = np.eye(4)
        affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ direction
        return "".join(nib.orientations.aff2axcodes(affine))

    direction = next(
        d
        for d in (Rotation.random(random_state=seed).as_matrix() for seed in range(200))
        if ras_codes(d) != orientation_code(d)
    )
    image = Image(
        np.random.default_rng(0).normal(size=(9, 11, 13)).astype(np.float32), (0.9, 1.3, 2.1), (5, 6, 7), direction
    )
    path = write_image(image, tmp_path / "oblique.nii.gz")
    monai = Compose(
        [
            LoadImaged("image"),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            Spacingd("image", pixdim=(1.5, 1.5, 2.0), mode="bilinear"),
        ]
    )({"image": str(path)})["image"]
    reoriented = permute_axes(image, *monai_reorientation(image, "RAS"))
    shape = target_shape_ijk(reoriented.size, reoriented.spacing, (1.5, 1.5, 2.0))
    step = np.array([1.5, 1.5, 2.0]) / reoriented.spacing
    start = grid_starts(reoriented.size, shape, step, aligned=False)
    maps = [axis_map(reoriented.size[a], shape[a], step[a], start[a]) for a in (2, 1, 0)]
    ours = resample_separable(torch.from_numpy(reoriented.array), maps).numpy().transpose(2, 1, 0)
    assert ours.shape == tuple(monai.shape[1:])
    np.testing.assert_allclose(ours, monai[0].numpy(), atol=1e-4)
    # Same place in space: MONAI's affine (RAS) is ours (LPS) with x and y negated.
    ours_affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ reoriented.index_to_world
    ours_affine[:3, 3] = ours_affine[:3, :3] @ np.asarray(start) + ours_affine[:3, 3]
    ours_affine[:3, :3] = ours_affine[:3, :3] / reoriented.spacing * np.array([1.5, 1.5, 2.0])
    np.testing.assert_allclose(ours_affine, monai.affine.numpy(), atol=1e-4)
