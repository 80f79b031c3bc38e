"""The modules' Uncertainty option on a real slicer-core scene, with real background runs in the warm worker: the
entropy comes back as a volume on the input's grid (flipped or oblique), coloured with a legend and shown over the
CT in every slice view; the per-lesion rows and the cost go on the result node; the panel's stage counts the
passes while the percent never goes back; an nnU-Net model is refused before anything starts."""

from __future__ import annotations

import json
import math
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
from support.geometries import rotation
from support.tiny_models import bright_ct, edge_state, threshold_spec_dict, write_model_folder

from lesionseg.image import Image
from lesionseg.inference.uncertainty import MAP_NAMES
from lesionseg.io import read_image
from lesionseg.jobs import EventKind, JobState
from lesionseg.mrml import ensure_segmentation_converters, image_from_volume_node, volume_node_from_image

slicer = pytest.importorskip("slicer")
pytest.importorskip("torch")

from LesionSegLib import segmenting, uncertainty  # noqa: E402
from LesionSegLib.selftest import write_threshold_model  # noqa: E402

pytestmark = pytest.mark.slow

STEEPNESS = 40.0  # the soft threshold model's logit per unit of 0..1 scaled CT: every voxel is somewhat unsure
VIEWS = ("Red", "Yellow", "Green")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("uncertainty-models")
    write_threshold_model(root, "soft-mets", "bone metastasis", threshold_hu=100.0, steepness=STEEPNESS)
    # Finds rises of intensity along network axis i, so the i-flipped pass disagrees with the others on those faces.
    spec = threshold_spec_dict("edge-mets", spacing=None, roi=(24, 24, 24))
    spec["labels"][0]["name"] = "bone metastasis"
    write_model_folder(root / "edge-mets", spec, edge_state())
    return root


@pytest.fixture
def logic(models, tmp_path):
    ensure_segmentation_converters()
    logic = segmenting.SegmentingLogic()
    logic.moduleName, logic.lesionModels = "ProstateMetSeg", True
    logic.modelsDir, logic.pythonExecutable, logic.workRoot = models, sys.executable, tmp_path
    yield logic
    logic.shutdownWorker()


def scene_with_views():
    """A scene with the three slice views' composite nodes, as the application's layout makes them."""
    scene = slicer.vtkMRMLScene()
    for name in VIEWS:
        scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode").SetLayoutName(name)
    return scene


def oblique_ct() -> Image:
    flipped = bright_ct()
    return Image(flipped.array, flipped.spacing, flipped.origin, rotation("x", 25) @ rotation("z", 35))


def two_boxes() -> Image:
    """Air with two bright boxes on a flipped grid: their faces across the network's i are what the members see
    differently."""
    values = np.full((24, 24, 24), -1000, np.int16)
    values[4:12, 4:12, 4:12] = 1000
    values[15:21, 14:20, 13:19] = 1000
    return Image(values, (1.0, 1.0, 1.0), (10.0, -5.0, 20.0), np.diag([-1.0, 1.0, -1.0]))


def run_reading_each_event(run, seconds: float = 180.0) -> list[tuple[object, float | None, str]]:
    """Every event of the run, each read as the panel's poll reads it, with the percent and stage shown after it."""
    shown = []
    deadline = time.monotonic() + seconds
    while not any(kind is EventKind.FINISHED for kind, _p, _s in shown):
        assert time.monotonic() < deadline, [kind for kind, _p, _s in shown]
        for event in run.request.poll():
            run.read(event)
            shown.append((event.kind, run.status.percent, run.status.stage))
        time.sleep(0.05)
    return shown


def binary_entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(p) + (1 - p) * np.log1p(-p))


@pytest.mark.parametrize("grid", ["flipped", "oblique"])
def test_uncertainty_comes_back_on_the_input_grid_over_the_ct_in_every_slice_view(logic, grid):
    scene = scene_with_views()
    image = bright_ct() if grid == "flipped" else oblique_ct()
    ct = volume_node_from_image(scene, image, "Pelvis CT")
    run = logic.startSegmentation(ct, logic.modelEntry("soft-mets"), "cpu", uncertainty="tta")
    run_reading_each_event(run)
    assert run.state is JobState.SUCCEEDED, run.failure()
    files = run.uncertainty_files()
    written = {name: read_image(files[name]) for name in MAP_NAMES}

    result = run.load_result(scene)
    assert not files["entropy"].exists()  # the work folder is gone, its volumes are in the scene
    assert set(run.uncertainty_nodes) == {"entropy", "mutual_information"}
    grid_of_ct = image_from_volume_node(ct)
    for name, node in run.uncertainty_nodes.items():
        shown = image_from_volume_node(node)
        assert shown.same_grid(grid_of_ct) and shown.same_grid(image), name
        np.testing.assert_array_equal(shown.array, written[name].array)
        assert node.GetName() == f"{result.GetName()} – uncertainty ({uncertainty.VOLUME_TITLES[name]})"
        assert result.GetNodeReference(uncertainty.VOLUME_REFERENCE_ROLES[name]) is node
    entropy = run.uncertainty_nodes["entropy"]
    values = image_from_volume_node(entropy).array
    assert values.dtype == np.float32 and 0.05 < values.max() <= math.log(2) + 1e-6
    if grid == "flipped":
        # Native, axis-aligned grid: the network sees each voxel itself, so its entropy follows from its value.
        scaled = (image.array.astype(np.float64) + 1000.0) / 2000.0
        p = 1.0 / (1.0 + np.exp(-STEEPNESS * (scaled - 1100.0 / 2000.0)))
        np.testing.assert_allclose(values, binary_entropy(p), atol=2e-4)

    display = entropy.GetDisplayNode()
    assert display.GetColorNode() is uncertainty.uncertainty_color_table(scene)
    assert display.GetColorNode().GetNumberOfColors() == 256
    assert not display.GetAutoWindowLevel()
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx((0.0, math.log(2)))
    legends = [
        entropy.GetNthDisplayNode(i)
        for i in range(entropy.GetNumberOfDisplayNodes())
        if entropy.GetNthDisplayNode(i).IsA("vtkMRMLColorLegendDisplayNode")
    ]
    assert len(legends) == 1 and legends[0].GetPrimaryDisplayNode() is display
    assert legends[0].GetTitleText() == entropy.GetName()

    views = [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode") for i in range(len(VIEWS))]
    assert [view.GetForegroundVolumeID() for view in views] == [entropy.GetID()] * len(VIEWS)
    assert [view.GetBackgroundVolumeID() for view in views] == [ct.GetID()] * len(VIEWS)
    assert all(view.GetForegroundOpacity() == pytest.approx(uncertainty.OVERLAY_OPACITY) for view in views)
    # A second run reuses the one colour table and takes the views over.
    again = logic.startSegmentation(ct, logic.modelEntry("soft-mets"), "cpu", uncertainty="tta")
    run_reading_each_event(again)
    again.load_result(scene)
    assert scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode") == 1
    assert views[0].GetForegroundVolumeID() == again.uncertainty_nodes["entropy"].GetID() != entropy.GetID()


def test_lesion_rows_and_the_cost_go_on_the_result_and_the_panel_counts_the_passes(logic):
    scene = scene_with_views()
    ct = volume_node_from_image(scene, two_boxes(), "Boxes CT")
    run = logic.startSegmentation(ct, logic.modelEntry("edge-mets"), "cpu", uncertainty="tta")
    assert run.request._message["uncertainty"] == "tta"  # what the warm worker was asked
    shown = run_reading_each_event(run)
    assert run.state is JobState.SUCCEEDED, run.failure()

    percents = [percent for _kind, percent, _stage in shown if percent is not None]
    assert percents == sorted(percents) and percents[-1] == 100.0
    passes = [stage for _kind, _percent, stage in shown if "(pass " in stage]
    assert list(dict.fromkeys(passes)) == [f"inference (pass {n} of 4)" for n in (1, 2, 3, 4)]
    first_pass = max(p for _k, p, s in shown if s == "inference (pass 1 of 4)")
    last_pass = max(p for _k, p, s in shown if s == "inference (pass 4 of 4)")
    assert first_pass < last_pass  # each pass moves the bar on; the extra passes are not a frozen bar
    assert shown[-1][2] == "done"

    files = run.uncertainty_files()
    written = json.loads(files["lesions_json"].read_text(encoding="utf-8"))
    information = read_image(files["mutual_information"]).array
    log = run.status.log
    result = run.load_result(scene)

    rows = json.loads(result.GetAttribute(uncertainty.UNCERTAINTY_LESIONS_ATTRIBUTE))
    assert rows == written["lesions"] and len(rows) == 2
    assert {"id", "confidence", "volume_mm3", "mean_probability", "centroid_ras_mm"} <= set(rows[0])
    assert result.GetAttribute(uncertainty.UNCERTAINTY_ATTRIBUTE) == "tta"
    assert result.GetAttribute(uncertainty.UNCERTAINTY_PASSES_ATTRIBUTE) == "4"
    seconds = json.loads(result.GetAttribute(uncertainty.UNCERTAINTY_PASS_SECONDS_ATTRIBUTE))
    assert seconds == written["pass_seconds"] and len(seconds) == 4 and all(s > 0 for s in seconds)
    assert any(line.startswith("Uncertainty: 4 network passes (flips: none, i, j, k)") for line in log)
    shown_information = image_from_volume_node(run.uncertainty_nodes["mutual_information"]).array
    np.testing.assert_array_equal(shown_information, information)
    assert information.max() > 0.1  # the members disagree on the boxes' faces


def test_a_run_without_uncertainty_adds_no_volume_and_no_uncertainty_attribute(logic):
    scene = scene_with_views()
    ct = volume_node_from_image(scene, bright_ct(), "Pelvis CT")
    run = logic.startSegmentation(ct, logic.modelEntry("soft-mets"), "cpu")
    run_reading_each_event(run)
    result = run.load_result(scene)
    assert run.uncertainty_files() == {} and run.uncertainty_nodes == {}
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 1
    assert not result.GetAttribute(uncertainty.UNCERTAINTY_LESIONS_ATTRIBUTE)
    assert scene.GetNthNodeByClass(0, "vtkMRMLSliceCompositeNode").GetForegroundVolumeID() is None


def test_the_uncertainty_option_comes_from_the_parameter_node(logic):
    entry = logic.modelEntry("soft-mets")
    assert logic.segmentOptions(SimpleNamespace(uncertainty=True))["uncertainty"] == "tta"
    assert logic.segmentOptions(SimpleNamespace(uncertainty=False))["uncertainty"] == "none"
    assert logic.segmentOptions(SimpleNamespace())["uncertainty"] == "none"  # a module without the field yet
    assert logic.uncertaintyReadiness(SimpleNamespace(uncertainty=True), entry) == ""
    scene = slicer.vtkMRMLScene()
    ct = volume_node_from_image(scene, bright_ct(), "Pelvis CT")
    with pytest.raises(ValueError, match="unknown uncertainty 'mc-dropout'"):
        logic.startSegmentation(ct, entry, "cpu", uncertainty="mc-dropout")


def test_an_nnunet_model_is_refused_with_uncertainty_before_anything_starts(tmp_path):
    pytest.importorskip("nnunetv2")
    from support import nnunet_models as nm

    from lesionseg.models.nnunet_import import import_nnunet_model

    dataset = nm.build_dataset(tmp_path / "build", configurations=("3d_fullres",), folds=(0,))
    models = tmp_path / "models"
    import_nnunet_model(dataset.root, models, "mets-nnunet")
    logic = segmenting.SegmentingLogic()
    logic.moduleName, logic.lesionModels = "ProstateMetSeg", True
    logic.modelsDir, logic.pythonExecutable, logic.workRoot = models, sys.executable, tmp_path / "work"
    (tmp_path / "work").mkdir()
    entry = logic.modelEntry("mets-nnunet")
    reason = logic.uncertaintyReadiness(SimpleNamespace(uncertainty=True), entry)
    assert "nnU-Net model" in reason and "LesionSeg's own models only" in reason
    assert logic.uncertaintyReadiness(SimpleNamespace(uncertainty=False), entry) == ""
    scene = slicer.vtkMRMLScene()
    ct = volume_node_from_image(scene, bright_ct(), "Pelvis CT")
    with pytest.raises(ValueError, match="turn Uncertainty off"):
        logic.startSegmentation(ct, entry, "cpu", uncertainty="tta")
    assert list((tmp_path / "work").iterdir()) == []  # nothing written, no job started
