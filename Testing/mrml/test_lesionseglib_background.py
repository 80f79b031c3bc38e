"""The two background jobs of LesionSeg's Slicer layer, for real, on a slicer-core scene: a segmentation
(child process, real inference with a tiny known model) and a training run (child process, real epochs).

They run side by side, as they do when a radiologist segments while an annotator's training runs: one
module-scoped start for both keeps the suite's time down, and each test then checks one job's outcome.
"""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
from support.slicer_modules import REPO
from support.tiny_models import bright_ct

from lesionseg.image import Image
from lesionseg.jobs import JobState
from lesionseg.mrml import (
    ensure_segmentation_converters,
    image_from_volume_node,
    labelmap_from_segmentation_node,
    segmentation_node_from_labelmap,
    volume_node_from_image,
)

slicer = pytest.importorskip("slicer")
pytest.importorskip("torch")
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from LesionSegLib import segmenting, training  # noqa: E402
from LesionSegLib.selftest import write_threshold_model  # noqa: E402

pytestmark = pytest.mark.slow

SPLEEN_TERMINOLOGY = {
    "context": "Segmentation category and type - 3D Slicer General Anatomy list",
    "category": {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"},
    "type": {"scheme": "SCT", "code": "78961009", "meaning": "Spleen"},
}


def training_case(scene, seed: int):
    values = np.random.default_rng(seed).normal(0, 20, (24, 32, 32)).round().astype(np.int16)
    labels = np.zeros(values.shape, np.uint8)
    labels[8:16, 10:20, 10 + seed : 22 + seed] = 1
    labels[18:21, 24:28, 4:8] = 2
    values[labels > 0] += 150
    ct = Image(values, (1.5, 1.5, 2.0), (10.0 * seed, -5.0, 0.0), np.eye(3))
    volume = volume_node_from_image(scene, ct, f"case {seed}")
    segmentation = segmentation_node_from_labelmap(
        scene, ct.with_array(labels), f"case {seed} corrected", {1: "spleen", 2: "lesion"}, volume
    )
    return volume, segmentation


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    ensure_segmentation_converters()
    scene = slicer.vtkMRMLScene()
    root = tmp_path_factory.mktemp("background")
    models, dataset = root / "models", root / "dataset"
    write_threshold_model(models, "tiny-spleen", "spleen", terminology=SPLEEN_TERMINOLOGY)
    for seed in range(3):
        training.save_case(dataset, *training_case(scene, seed), "Dr. Rivera")

    ct = bright_ct()
    volume = volume_node_from_image(scene, ct, "Abdomen CT")
    before = image_from_volume_node(volume)
    logic = segmenting.SegmentingLogic()
    logic.moduleName, logic.modelsDir, logic.pythonExecutable = "SpleenSeg", models, sys.executable
    logic.workRoot = root
    nodes_before = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")

    trainer = training.TrainingRun(dataset, "tiny", "spleen-retrained", models, sys.executable, "cpu", epochs=1)
    history = trainer.history_table(scene)
    chart = training.history_plot(scene, history, "LesionSeg training")
    trainer.start()
    segmenter = logic.startSegmentation(volume, logic.modelEntry("tiny-spleen"), "cpu")
    inputs_written = segmenter.input_path.is_file()
    segment_log, train_log, refills = [], [], 0
    deadline = time.monotonic() + 300
    while not (segmenter.finished and trainer.finished) and time.monotonic() < deadline:
        segment_log += segmenter.poll().log
        if trainer.poll():
            trainer.history_table(scene, history)
            refills += 1
        train_log += trainer.log
        time.sleep(0.1)
    segment_log += segmenter.poll().log
    if trainer.poll():
        trainer.history_table(scene, history)
        refills += 1
    train_log += trainer.log
    return SimpleNamespace(**locals())


def test_segmenting_in_the_background_adds_a_new_named_node_on_the_input_grid(jobs):
    run = jobs.segmenter
    assert jobs.inputs_written and run.input_path.parent.parent == jobs.root
    assert run.state is JobState.SUCCEEDED, (run.failure(), jobs.segment_log, run.job.stderr_text[-2000:])
    assert run.status.percent == 100.0 and run.status.stage == "done"
    assert any(line.startswith("Stage: ") for line in jobs.segment_log)
    assert jobs.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == jobs.nodes_before

    node = jobs.logic.loadSegmentationResult(run, jobs.scene)
    assert node.GetName() == "Abdomen CT – SpleenSeg 0.0.1-selftest"
    assert node.GetAttribute(segmenting.MODEL_ID_ATTRIBUTE) == "tiny-spleen"
    assert node.GetAttribute(segmenting.MODEL_VERSION_ATTRIBUTE) == "0.0.1-selftest"
    assert node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is jobs.volume
    segment = node.GetSegmentation().GetNthSegment(0)
    assert node.GetSegmentation().GetNumberOfSegments() == 1 and segment.GetName() == "spleen"
    assert segment.GetColor() == pytest.approx((0.95, 0.75, 0.1))
    entry = segment.GetTerminology()
    assert entry.startswith("Segmentation category and type - 3D Slicer General Anatomy list~")
    assert "SCT^78961009^Spleen" in entry and "SCT^123037004^Anatomical Structure" in entry
    labels, _ = labelmap_from_segmentation_node(node, jobs.volume)
    np.testing.assert_array_equal(labels.array > 0, jobs.ct.array > 100)
    after = image_from_volume_node(jobs.volume)
    np.testing.assert_array_equal(after.array, jobs.before.array)
    assert after.same_grid(jobs.before) and not run.work_dir.exists()


def test_training_in_the_background_plots_each_epoch_and_registers_the_model(jobs):
    run, table, chart = jobs.trainer, jobs.history, jobs.chart
    assert run.state is JobState.SUCCEEDED, (run.failure(), jobs.train_log)
    assert jobs.refills == 1 and table.GetNumberOfRows() == 1
    assert table.GetTable().GetColumnByName("loss").GetValue(0) > 0
    assert 0.0 <= table.GetTable().GetColumnByName("dice_mean").GetValue(0) <= 1.0
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    series = chart.GetNthPlotSeriesNode(1)
    assert series.GetTableNode() is table and series.GetYColumnName() == "dice_mean"
    assert run.progress_text().startswith("epoch 1, 1 iterations")
    assert any(line.startswith("epoch 1:") for line in jobs.train_log)

    spec = run.model()
    assert spec.id == "spleen-retrained" and (jobs.models / "spleen-retrained" / "spec.json").is_file()
    # The trained model is what the segmentation modules list next (it has a lesion label: ProstateMetSeg).
    lesion_models = {e.spec.id: e for e in segmenting.model_entries(jobs.models, lesion=True)}
    assert "spleen-retrained" in lesion_models and not segmenting.weights_problem(lesion_models["spleen-retrained"])

    with pytest.raises(ValueError, match="already holds a model"):
        training.TrainingRun(jobs.dataset, "tiny", "spleen-retrained", jobs.models, sys.executable)
    with pytest.raises(ValueError, match="no training of 'other' to resume"):
        training.TrainingRun(jobs.dataset, "tiny", "other", jobs.models, sys.executable, resume=True)
