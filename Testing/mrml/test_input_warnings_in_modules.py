"""A segmentation run from the modules keeps the engine's input warnings (a "CT" without Hounsfield units):
in its log, on the result node, and from the result event even when no warning event was seen."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest

from lesionseg.image import Image
from lesionseg.jobs import JobState
from lesionseg.jobs.runner import EventKind
from lesionseg.mrml import ensure_segmentation_converters, volume_node_from_image

slicer = pytest.importorskip("slicer")
pytest.importorskip("torch")

from LesionSegLib import segmenting  # noqa: E402
from LesionSegLib.selftest import write_threshold_model  # noqa: E402


def ct_model(models_dir) -> None:
    folder = write_threshold_model(models_dir, "tiny-ct", "spleen")
    spec = json.loads((folder / "spec.json").read_text())
    spec["modality"] = "CT"
    (folder / "spec.json").write_text(json.dumps(spec))


def wait(run, seconds=180) -> list[str]:
    deadline = time.monotonic() + seconds
    log: list[str] = []
    while not run.finished and time.monotonic() < deadline:
        log += run.poll().log
        time.sleep(0.1)
    return log + run.poll().log


def test_segmenting_an_8bit_volume_with_a_ct_model_keeps_the_warning_on_the_result(tmp_path):
    ensure_segmentation_converters()
    scene = slicer.vtkMRMLScene()
    values = np.full((9, 20, 18), 40, np.uint8)
    values[2:6, 5:14, 4:10] = 250
    volume = volume_node_from_image(scene, Image(values, (0.9, 1.1, 2.5)), "Photo")
    ct_model(tmp_path / "models")
    entry = next(e for e in segmenting.model_entries(tmp_path / "models") if e.spec.id == "tiny-ct")
    run = segmenting.SegmentationRun(volume, entry, "cpu", "SpleenSeg", sys.executable, tmp_path / "models", tmp_path)
    log = wait(run.start())
    assert run.state is JobState.SUCCEEDED, run.failure()
    assert len(run.warnings) == 1 and "Hounsfield" in run.warnings[0]
    assert [line for line in log if "Hounsfield" in line] == [f"Warning: {run.warnings[0]}"]
    node = run.load_result(scene)
    assert node.GetAttribute(segmenting.WARNINGS_ATTRIBUTE) == run.warnings[0]


def test_a_warning_only_in_the_result_event_still_reaches_the_log():
    run = object.__new__(segmenting.SegmentationRun)  # only the event handling is exercised here
    run.status, run.warnings = segmenting.RunStatus(), []
    run._apply(EventKind.WARNING, {"text": "seen once"})
    run._apply(EventKind.RESULT, {"seconds": 1.0, "warnings": ["seen once", "only in the result"]})
    assert run.warnings == ["seen once", "only in the result"]
    assert [line for line in run.status.log if line.startswith("Warning")] == [
        "Warning: seen once",
        "Warning: only in the result",
    ]
