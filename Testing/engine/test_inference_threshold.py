"""A probability threshold for models with one foreground label: spec field, argument, CLI, and its errors.

The hand-set SegResNet computes ``logit1 = gain * (x - t)`` and ``logit0 = 0`` on the scaled intensity
``x = (HU + 1000) / 2000``, so its foreground probability is ``sigmoid(logit1)``. "Probability above p" is
therefore "HU above 100 + 2000 * logit(p) / gain": every threshold has an exact answer to compare with.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from support.tiny_models import phantom_ct, threshold_spec_dict, threshold_state, write_model_folder

from lesionseg.inference import segment_image
from lesionseg.io import read_image, write_image
from lesionseg.models import load_spec

torch.set_num_threads(2)
GAIN = 20.0  # soft enough that thresholds from 0.1 to 0.9 move the boundary by tens of HU


def hu_cut(probability: float) -> float:
    return 100.0 + 2000.0 * math.log(probability / (1.0 - probability)) / GAIN


def assert_labels_above(labelmap, ct, probability: float) -> None:
    """Equal to "HU above the cut" wherever a voxel is not within float rounding of the cut."""
    cut = hu_cut(probability)
    clear = np.abs(ct.array - cut) > 0.05
    expected = (ct.array > cut).astype(np.uint8)
    np.testing.assert_array_equal(labelmap.array[clear], expected[clear])
    assert clear.mean() > 0.99


@pytest.fixture(scope="module")
def soft_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "soft"
    spec = threshold_spec_dict("soft", spacing=None, roi=(64, 64, 64))
    return write_model_folder(folder, spec, threshold_state(GAIN))


@pytest.fixture(scope="module")
def ct():
    return phantom_ct()


@pytest.mark.parametrize("probability", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_threshold_keeps_voxels_whose_probability_exceeds_it(soft_model, ct, probability):
    labelmap, _ = segment_image(ct, str(soft_model), device="cpu", threshold=probability)
    assert_labels_above(labelmap, ct, probability)


def test_no_threshold_is_the_argmax_and_lower_thresholds_find_more(soft_model, ct):
    argmax, _ = segment_image(ct, str(soft_model), device="cpu")
    half, _ = segment_image(ct, str(soft_model), device="cpu", threshold=0.5)
    np.testing.assert_array_equal(argmax.array, half.array)
    counts = [
        int(segment_image(ct, str(soft_model), device="cpu", threshold=p)[0].array.sum()) for p in (0.8, 0.5, 0.2)
    ]
    assert counts[0] < counts[1] < counts[2], counts


def test_spec_threshold_is_the_default_and_the_argument_overrides_it(tmp_path, ct):
    spec = threshold_spec_dict("spec-cut", spacing=None, roi=(64, 64, 64), threshold=0.25)
    folder = write_model_folder(tmp_path / "spec-cut", spec, threshold_state(GAIN))
    assert load_spec(folder / "spec.json").inference.threshold == 0.25
    assert_labels_above(segment_image(ct, str(folder), device="cpu")[0], ct, 0.25)
    assert_labels_above(segment_image(ct, str(folder), device="cpu", threshold=0.75)[0], ct, 0.75)


def test_threshold_applies_to_a_resampled_grid_too(tmp_path, ct):
    """On a coarser network grid the cut is taken after the probabilities return to the input grid."""
    spec = threshold_spec_dict("soft-resampled", spacing=(1.5, 1.5, 2.0))
    folder = write_model_folder(tmp_path / "soft-resampled", spec, threshold_state(GAIN))
    low = segment_image(ct, str(folder), device="cpu", threshold=0.2)[0].array.astype(bool)
    high = segment_image(ct, str(folder), device="cpu", threshold=0.8)[0].array.astype(bool)
    assert high.sum() < low.sum() and not (high & ~low).any()  # nested: every high voxel is also low
    # away from the boundaries (where interpolation decides) each cut matches its HU level
    for probability, labels in ((0.2, low), (0.8, high)):
        cut = hu_cut(probability)
        assert labels[ct.array > cut + 40].all() and not labels[ct.array < cut - 40].any()


@pytest.mark.parametrize("value", [0.0, 1.0, 1.5, -0.2])
def test_a_threshold_that_is_not_a_probability_is_refused(soft_model, ct, value):
    with pytest.raises(ValueError, match="between 0 and 1"):
        segment_image(ct, str(soft_model), device="cpu", threshold=value)


def test_threshold_on_a_model_with_several_labels_is_refused(tmp_path, ct):
    spec = threshold_spec_dict("three", spacing=None, roi=(64, 64, 64))
    spec["network"]["parameters"]["out_channels"] = 3
    spec["labels"].append({"value": 2, "name": "other", "color": [0.1, 0.2, 0.9]})
    state = threshold_state(GAIN)
    state["conv_final.2.conv.weight"] = torch.cat([state["conv_final.2.conv.weight"], torch.zeros(1, 2, 1, 1, 1)])
    state["conv_final.2.conv.bias"] = torch.cat([state["conv_final.2.conv.bias"], torch.full((1,), -50.0)])
    folder = write_model_folder(tmp_path / "three", spec, state)
    with pytest.raises(ValueError, match="one foreground label"):
        segment_image(ct, str(folder), device="cpu", threshold=0.3)
    spec["inference"]["threshold"] = 0.3
    (folder / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="inference.threshold"):
        load_spec(folder / "spec.json")


@pytest.mark.slow
def test_segment_command_takes_a_threshold_and_reports_it(soft_model, ct, tmp_path):
    source = tmp_path / "ct.nii.gz"
    write_image(ct, source)
    command = [sys.executable, "-m", "lesionseg", "segment", "--model", str(soft_model), "--input", str(source)]
    done = subprocess.run(
        [*command, "--output", str(tmp_path / "cut.nii.gz"), "--device", "cpu", "--threshold", "0.3"]
        + ["--progress", "jsonl"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["event"] == "result" and result["threshold"] == 0.3
    assert_labels_above(read_image(tmp_path / "cut.nii.gz"), ct, 0.3)
    refused = subprocess.run(
        [*command, "--output", str(tmp_path / "bad.nii.gz"), "--device", "cpu", "--threshold", "30"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 2
    assert "between 0 and 1" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "bad.nii.gz").exists()
