"""How much memory nnU-Net's predictor needs for one image, so a run that cannot fit is refused before it starts.

The terms follow what ``nnUNetPredictor.predict_single_npy_array`` allocates (nnunetv2 2.8.1), in bytes, with ``V``
the input's voxels, ``T`` its voxels on the configuration's grid (the input resampled to the plans' spacing),
``c`` the network's input channels (a cascade's second stage adds the first stage's labels, one-hot) and ``K`` its
output channels.  The largest of three phases counts, on top of what is held throughout:

* throughout: the image as read and its float32 copy handed to nnU-Net (``(itemsize + 4c) V``);
* preprocessing: nnU-Net's float32 copy ``4cV``, the float64 copy its resampling reads ``8cV``, the result ``4cT``;
* sliding window: the preprocessed input ``4cT``, the fp16 logits and count map ``2(K + 1) T`` (a second fold's
  logits beside the first's: ``2KT`` more), and one window's activations (below);
* back to the input grid: the fp16 logits ``2KT``, their float64 copy for resampling ``8KT``, the logits of every
  class on the input grid ``4KV`` and the argmax ``9V``.

One window holds, per network stage, ``6 · features · voxels`` at that stage's resolution: where the decoder meets
the skip connection, the skip, the upsampled map, their concatenation (twice the features) and the convolution's and
normalisation's outputs live at once; plus the input window and mirrored predictions; fp16 under CUDA's autocast.
(On nnU-Net's default 3d_fullres network, 128³ window, this gives 2.1 GiB; benchmarks/RESULTS.md has the measured
peak of a whole run, 2.5 GiB with the imports.)

On a GPU, nnU-Net keeps the input and logits on the device and falls back to host RAM for them when they do not fit,
so only the window must fit the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lesionseg.inference.memory import MemoryPlan, check_memory_plan
from lesionseg.models.nnunet import NnunetConfiguration

LIVE_MAPS_PER_STAGE = 6  # feature maps of one stage's size alive at once, in units of its feature count


def grid_voxels(configuration: NnunetConfiguration, shape_zyx: Sequence[int], spacing_zyx: Sequence[float]) -> int:
    """Voxels of the input resampled to the configuration's spacing (nnU-Net's ``compute_new_shape``; a 2D
    configuration keeps the first axis after ``transpose_forward``)."""
    order = configuration.plans.get("transpose_forward", [0, 1, 2])
    shape = [int(shape_zyx[axis]) for axis in order]
    spacing = [float(spacing_zyx[axis]) for axis in order]
    target = [float(s) for s in configuration.config["spacing"]]
    if len(target) < len(shape):  # 2D: slices keep their own spacing along the first axis
        target = spacing[: len(shape) - len(target)] + target
    return int(np.prod([max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target, strict=True)]))


def window_bytes(configuration: NnunetConfiguration, bytes_per_value: int, mirroring: bool) -> int:
    """One sliding-window step: every stage's skip features and decoder output, the input and the predictions."""
    patch = [int(p) for p in configuration.config["patch_size"]]
    patch_voxels = int(np.prod(patch))
    kwargs = configuration.config.get("architecture", {}).get("arch_kwargs", {})
    features, strides = kwargs.get("features_per_stage"), kwargs.get("strides")
    if not features or not strides or len(features) != len(strides):
        feature_values = 64 * patch_voxels  # an architecture without these keys: a generous stand-in
    else:
        feature_values, scale = 0, 1
        for count, stride in zip(features, strides, strict=True):
            scale *= int(np.prod(stride if isinstance(stride, (list, tuple)) else [stride] * len(patch)))
            feature_values += LIVE_MAPS_PER_STAGE * int(count) * max(1, patch_voxels // scale)
    predictions = configuration.output_channels() * patch_voxels * (3 if mirroring else 2)
    return bytes_per_value * (feature_values + configuration.input_channels() * patch_voxels + predictions)


def stage_bytes(
    configuration: NnunetConfiguration,
    input_voxels: int,
    target_voxels: int,
    input_itemsize: int,
    folds: int,
    mirroring: bool,
    device_type: str,
) -> tuple[int, int]:
    """(host bytes, device bytes for one window) of one configuration's prediction; see the module's terms."""
    c, k = configuration.input_channels(), configuration.output_channels()
    v, t = input_voxels, target_voxels
    window = window_bytes(configuration, 2 if device_type == "cuda" else 4, mirroring)
    held = (input_itemsize + 4 * c) * v
    preprocessing = 4 * c * v + 8 * c * v + 4 * c * t
    windows = 4 * c * t + 2 * (k + 1) * t + (2 * k * t if folds > 1 else 0) + (0 if device_type == "cuda" else window)
    back = 2 * k * t + 8 * k * t + 4 * k * v + 9 * v
    return held + max(preprocessing, windows, back), window


def plan_nnunet_memory(
    stages: Sequence[tuple[NnunetConfiguration, int]],
    shape_zyx: Sequence[int],
    spacing_zyx: Sequence[float],
    input_itemsize: int,
    mirroring: bool,
    device_type: str,
    free_device_bytes: int,
    free_host_bytes: int,
) -> MemoryPlan:
    """The memory of a run of ``stages`` (each configuration with its number of folds) on an image of this size.

    The stages run one after the other, so the largest counts.  ``fits`` compares with ``free_host_bytes`` less the
    safety margin, as :func:`lesionseg.inference.memory.plan_memory` does.
    """
    from lesionseg.inference.memory import SAFETY

    input_voxels = int(np.prod([int(n) for n in shape_zyx]))
    host, window = 0, 0
    for configuration, folds in stages:
        target = grid_voxels(configuration, shape_zyx, spacing_zyx)
        stage_host, stage_window = stage_bytes(
            configuration, input_voxels, target, input_itemsize, folds, mirroring, device_type
        )
        host, window = max(host, stage_host), max(window, stage_window)
    if device_type != "cuda":
        return MemoryPlan(1, True, 0, host, host <= free_host_bytes * SAFETY)
    device_fits = window <= free_device_bytes * SAFETY
    note = "" if device_fits else "does not fit this GPU"
    return MemoryPlan(1, False, window, host, device_fits and host <= free_host_bytes, note, device_fits)


def check_nnunet_memory(
    stages: Sequence[tuple[NnunetConfiguration, int]],
    image: Any,
    mirroring: bool,
    device: Any,
    crop_body: bool,
) -> MemoryPlan:
    """Refuse, before any checkpoint is loaded, a run this process cannot hold (the same error as our own models')."""
    from lesionseg.inference.devices import free_memory_bytes, host_memory

    host = host_memory()
    plan = plan_nnunet_memory(
        stages,
        image.array.shape,
        [float(s) for s in image.spacing[::-1]],
        image.array.dtype.itemsize,
        mirroring,
        device.type,
        free_memory_bytes(device) if device.type == "cuda" else 0,
        host.available_bytes,
    )
    check_memory_plan(plan, host, device.type, crop_body)
    return plan
