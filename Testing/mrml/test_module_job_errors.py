"""A background job that fails on bad input tells the module user why in one line, never with a traceback.

The jobs are the real ones the modules start (a child ``python -m lesionseg ...``) on a slicer-core scene.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest
from support.training_data import sphere_dataset_folder

from lesionseg.image import Image
from lesionseg.jobs import JobState
from lesionseg.mrml import volume_node_from_image

slicer = pytest.importorskip("slicer")
pytest.importorskip("torch")

from LesionSegLib import segmenting, training  # noqa: E402
from LesionSegLib.selftest import write_threshold_model  # noqa: E402

pytestmark = pytest.mark.slow


def _wait(run, seconds: float = 240.0) -> None:
    deadline = time.monotonic() + seconds
    while not run.finished and time.monotonic() < deadline:
        run.poll()
        time.sleep(0.1)
    run.poll()


def test_segmenting_with_a_model_whose_weights_do_not_fit_says_so_in_one_line(tmp_path):
    scene = slicer.vtkMRMLScene()
    models = tmp_path / "models"
    folder = write_threshold_model(models, "misfit", "spleen")
    spec = json.loads((folder / "spec.json").read_text())
    # The weights keep their verified hash; only the network the spec builds no longer matches them.
    spec["network"]["parameters"]["init_filters"] = 4
    (folder / "spec.json").write_text(json.dumps(spec))
    values = np.full((12, 40, 40), 40, np.int16)
    values[4:8, 10:30, 10:30] = 250
    volume = volume_node_from_image(scene, Image(values, (1.0, 1.0, 2.0)), "Abdomen CT")
    logic = segmenting.SegmentingLogic()
    logic.moduleName, logic.modelsDir, logic.pythonExecutable = "SpleenSeg", models, sys.executable
    logic.workRoot = tmp_path
    nodes = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")

    run = logic.startSegmentation(volume, logic.modelEntry("misfit"), "cpu")
    _wait(run)

    assert run.state is JobState.FAILED, run.job.stderr_text[-2000:]
    message = run.failure()
    assert message.startswith("Segmentation failed: model 'misfit': the weights in ") and "do not fit" in message
    assert "\n" not in message and "Traceback" not in message
    assert "Traceback" not in run.job.stderr_text
    with pytest.raises(RuntimeError, match="do not fit"):
        logic.loadSegmentationResult(run, scene)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == nodes


def test_resuming_a_training_from_a_damaged_checkpoint_says_so_in_one_line(tmp_path):
    dataset = sphere_dataset_folder(tmp_path / "dataset", cases=2)
    models = tmp_path / "models"
    (models / "broken").mkdir(parents=True)
    (models / "broken" / "checkpoint_latest.pt").write_bytes(b"PK\x03\x04 cut off by a power failure")
    run = training.TrainingRun(dataset, "tiny", "broken", models, sys.executable, "cpu", resume=True)
    run.start()
    _wait(run)

    assert run.state is JobState.FAILED, run.job.stderr_text[-2000:]
    message = run.failure()
    assert message.startswith("Training failed: ") and "checkpoint_latest.pt cannot be loaded" in message
    assert "\n" not in message and "Traceback" not in message and "Traceback" not in run.job.stderr_text
