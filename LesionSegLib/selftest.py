"""What the modules' self-tests share (Qt-free): a tiny, real model, and the runner of their scenarios.

The network is MONAI's SegResNet with its weights set so that it labels every voxel brighter than
``threshold_hu`` as class 1: its answer is known for any CT, so a self-test can run the whole
segmentation path (job, child process, inference, result node) and check the exact voxels. Writing it
needs torch, monai and safetensors.
"""

from __future__ import annotations

import json
import unittest
from collections.abc import Callable, Sequence
from pathlib import Path

# The intensity window the model scales CT into 0..1 with; the threshold sits inside it.
WINDOW_HU = (-1000.0, 1000.0)


def threshold_model_spec(
    model_id: str, label_name: str, threshold_hu: float = 100.0, terminology: dict | None = None
) -> dict:
    """A model spec (as JSON data) for the threshold network; ``terminology`` as in the model-spec schema."""
    label = {"value": 1, "name": label_name, "color": [0.95, 0.75, 0.1]}
    if terminology:
        label["terminology"] = terminology
    return {
        "schema_version": 1,
        "id": model_id,
        "version": "0.0.1-selftest",
        "description": f"self-test model: {label_name} wherever CT > {threshold_hu:g} HU",
        "network": {
            "name": "SegResNet",
            "parameters": {
                "spatial_dims": 3,
                "init_filters": 2,
                "in_channels": 1,
                "out_channels": 2,
                "blocks_down": [1],
                "blocks_up": [],
                "norm": "batch",
            },
        },
        "input_channels": 1,
        "preprocessing": {
            "orientation": "RAS",
            "spacing": None,
            "intensity": {
                "kind": "range",
                "a_min": WINDOW_HU[0],
                "a_max": WINDOW_HU[1],
                "b_min": 0.0,
                "b_max": 1.0,
                "clip": True,
            },
        },
        "inference": {"roi_size": [16, 16, 16], "overlap": 0.25, "sw_batch_size": 1, "blend": "constant"},
        "labels": [label],
        "weights": {"format": "safetensors", "path": "model.safetensors", "sha256": None},
    }


def threshold_weights(threshold_hu: float = 100.0, steepness: float = 400.0) -> dict:
    """SegResNet weights computing ``logit1 = steepness * (x - t)`` and ``logit0 = 0`` on the scaled CT ``x``."""
    import torch
    from monai.networks.nets import SegResNet

    spec = threshold_model_spec("selftest", "x")
    network = SegResNet(**spec["network"]["parameters"])
    weights = {name: torch.zeros_like(value) for name, value in network.state_dict().items()}
    # The first convolution passes the voxel itself on (centre tap), the residual block adds zero to it,
    # and every batch norm is an identity: weight 1, bias 0, mean 0, and a variance that cancels its eps.
    weights["convInit.conv.weight"][0, 0, 1, 1, 1] = 1.0
    for norm in ("down_layers.0.1.norm1", "down_layers.0.1.norm2", "conv_final.0"):
        weights[f"{norm}.weight"].fill_(1.0)
        weights[f"{norm}.running_var"].fill_(1.0 - 1e-5)
    scaled_threshold = (threshold_hu - WINDOW_HU[0]) / (WINDOW_HU[1] - WINDOW_HU[0])
    weights["conv_final.2.conv.weight"][1, 0] = steepness
    weights["conv_final.2.conv.bias"][1] = -steepness * scaled_threshold
    return weights


def write_threshold_model(
    models_dir: str | Path,
    model_id: str,
    label_name: str,
    threshold_hu: float = 100.0,
    terminology: dict | None = None,
    steepness: float = 400.0,
) -> Path:
    """Install the threshold model as a user model ``<models_dir>/<model_id>/`` with its weights' SHA-256.

    Its class-1 logit is ``steepness * (x - t)`` on the 0..1 scaled CT, so a low steepness gives probabilities
    that a threshold can move through (one HU is 1/2000 of that scale).
    """
    from safetensors.torch import save_file

    from lesionseg.models import file_hashes

    folder = Path(models_dir) / model_id
    folder.mkdir(parents=True, exist_ok=True)
    spec = threshold_model_spec(model_id, label_name, threshold_hu, terminology)
    weights_path = folder / spec["weights"]["path"]
    save_file({k: v.contiguous() for k, v in threshold_weights(threshold_hu, steepness).items()}, str(weights_path))
    spec["weights"]["sha256"] = file_hashes(weights_path)["sha256"]
    (folder / "spec.json").write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return folder


def run_scenarios(test: unittest.TestCase, names: Sequence[str], say: Callable[[str], None] = print) -> list[str]:
    """Run the scenarios ``names`` of ``test`` one after another, each after ``setUp``; returns those skipped.

    This is what a module's ``runTest`` (Slicer's "Reload and Test") does. A scenario that cannot run here
    calls ``skipTest(reason)``: unittest's runner, as ``slicer.testing.runUnitTest`` uses, counts it as
    skipped; here it is said, with its reason, and the next scenario still runs. Any failure propagates.
    """
    skipped: list[str] = []
    for name in names:
        test.setUp()
        try:
            getattr(test, name)()
        except unittest.SkipTest as reason:
            say(f"Skipped {name}: {reason}")
            skipped.append(name)
        finally:
            test.tearDown()
    return skipped
