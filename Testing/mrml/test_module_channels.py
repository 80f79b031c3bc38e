"""A model that takes three images, in the module logic on a real slicer-core scene: the panel's selectors, the
readiness text, the preselection by name, and a real background run fed all three volumes."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
from support.tiny_models import threshold_spec_dict, threshold_state, write_model_folder

slicer = pytest.importorskip("slicer")

from lesionseg.image import Image  # noqa: E402
from lesionseg.jobs import JobState  # noqa: E402
from lesionseg.mrml import (  # noqa: E402
    ensure_segmentation_converters,
    labelmap_from_segmentation_node,
    volume_node_from_image,
)
from LesionSegLib import segmenting  # noqa: E402
from LesionSegLib.channels import CHANNEL_FIELDS, channel_labels  # noqa: E402

NAMES = ("CT", "PET", "MR")


def third_channel_model(folder: Path) -> Path:
    """A hand-set three-channel SegResNet whose class 1 is where the third image (MR), z-scored, is above 0: it
    ignores the first two, so only the MR fed as the third channel gives its answer."""
    spec = threshold_spec_dict("three-inputs", spacing=None, roi=(16, 16, 16))
    spec["network"]["parameters"]["in_channels"] = 3
    spec.update(
        input_channels=3, inputs=[{"name": n, "modality": m} for n, m in zip(NAMES, ("CT", "PT", "MR"), strict=True)]
    )
    state = threshold_state(gain=50.0)
    weights = state["convInit.conv.weight"]
    state["convInit.conv.weight"] = weights.new_zeros((weights.shape[0], 3, *weights.shape[2:]))
    state["convInit.conv.weight"][0, 2, 1, 1, 1] = 1.0
    return write_model_folder(folder, spec, state)


class Parameters:
    """The channel fields of a segmentation module's parameter node."""

    inputVolume = channelVolume = channelVolume3 = channelVolume4 = None


def test_a_three_image_model_gets_three_selectors_and_runs_on_all_three(tmp_path):
    ensure_segmentation_converters()
    third_channel_model(tmp_path / "models" / "three-inputs")
    logic = segmenting.SegmentingLogic()
    logic.moduleName, logic.lesionModels = "SpleenSeg", False
    logic.modelsDir, logic.pythonExecutable, logic.workRoot = tmp_path / "models", sys.executable, tmp_path
    entry = logic.modelEntry("three-inputs")
    assert logic.modelChannels(entry) == list(NAMES) and len(CHANNEL_FIELDS) >= 3
    assert channel_labels(entry.spec) == ["CT volume:", "PET volume:", "MR volume:"]

    scene = slicer.vtkMRMLScene()
    rng = np.random.default_rng(4)
    shape = (12, 20, 24)
    mr_values = np.zeros(shape, np.int16)
    mr_values[4:8, 6:14, 8:16] = 300
    images = [rng.normal(40, 10, shape).astype(np.int16), rng.normal(2, 0.5, shape).astype(np.float32), mr_values]
    ct, pet, mr = (
        volume_node_from_image(scene, Image(values, (1.0, 1.0, 2.0), (5.0, -3.0, 10.0), np.eye(3)), name)
        for values, name in zip(images, ("Body CT", "PET AC", "T1 MR"), strict=True)
    )
    parameters = Parameters()
    parameters.inputVolume = ct
    assert "Select the PET volume" in logic.channelsReadiness(parameters, entry)
    logic.applyModelChoice(parameters, entry, scene)  # "PET AC" and "T1 MR" are named for their channels
    assert (parameters.channelVolume, parameters.channelVolume3) == (pet, mr)
    assert logic.channelsReadiness(parameters, entry) == ""
    parameters.channelVolume3 = pet
    assert "The MR volume is the PET volume" in logic.channelsReadiness(parameters, entry)
    parameters.channelVolume3 = None
    assert "Select the MR volume" in logic.channelsReadiness(parameters, entry)
    parameters.channelVolume3 = mr

    volumes = logic.channelVolumes(parameters, entry)
    assert volumes == [ct, pet, mr]
    run = logic.startSegmentation(volumes[0], entry, "cpu", channelVolumes=volumes[1:])
    assert len(run.input_paths) == 3
    deadline = time.monotonic() + 300
    while not run.finished and time.monotonic() < deadline:
        run.poll()
        time.sleep(0.05)
    run.poll()
    assert run.state is JobState.SUCCEEDED, run.failure()
    labels, _ = labelmap_from_segmentation_node(logic.loadSegmentationResult(run, scene), ct)
    assert np.array_equal(labels.array > 0, mr_values > mr_values.mean())
    logic.shutdownWorker()
