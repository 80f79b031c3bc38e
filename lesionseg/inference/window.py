"""Sliding-window inference with a progress callback per batch of windows.

Window placement, padding and blending follow MONAI's ``sliding_window_inference`` (same starts, same
symmetric zero padding for volumes smaller than the ROI, raw network outputs averaged), so our stitched
logits equal MONAI's.  Owning the loop lets us report real progress, keep the stitched output on another
device than the network, and stop between batches.

Two steps: :func:`plan_windows` pads the volume and decides where the windows go and which of them the network
must compute; :func:`stitch_windows` runs those and averages every window's output into the volume.

The volume is ``[channels, k, j, i]`` (engine order); the network receives MONAI's ``[batch, channels, i, j, k]``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np

_MAX_CONSTANT_VALUES = 8  # distinct constant windows whose outputs are kept for reuse


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start indices along one axis for a volume already padded to at least ``roi``."""
    if roi >= size:
        return [0]
    interval = max(int(roi * (1 - overlap)), 1)
    count = next(d for d in range(math.ceil(size / interval)) if d * interval + roi >= size) + 1
    return [min(d * interval, size - roi) for d in range(count)]


def window_grid(size_ijk: Sequence[int], roi_ijk: Sequence[int], overlap: float) -> list[tuple[int, int, int]]:
    """(i, j, k) starts of every window, in MONAI's order (i slowest)."""
    axes = [window_starts(max(n, r), r, overlap) for n, r in zip(size_ijk, roi_ijk, strict=True)]
    return list(itertools.product(*axes))


def count_windows(size_ijk: Sequence[int], roi_ijk: Sequence[int], overlap: float) -> int:
    padded = [max(n, r) for n, r in zip(size_ijk, roi_ijk, strict=True)]
    return int(np.prod([len(window_starts(n, r, overlap)) for n, r in zip(padded, roi_ijk, strict=True)]))


def importance_map(roi_ijk: Sequence[int], blend: str, device) -> "torch.Tensor":  # noqa: F821
    """Blending weights ``[k, j, i]`` for one window."""
    import torch

    if blend == "constant":
        return torch.ones(tuple(reversed(roi_ijk)), device=device)
    from monai.data.utils import compute_importance_map

    weights = compute_importance_map(tuple(roi_ijk), mode="gaussian", sigma_scale=0.125, device=device)
    return weights.permute(2, 1, 0).contiguous().float()


def symmetric_padding(size_ijk: Sequence[int], roi_ijk: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """(before, after) zero padding per axis (i, j, k) up to the ROI, split as MONAI splits it for small volumes."""
    gaps = [max(r - n, 0) for n, r in zip(size_ijk, roi_ijk, strict=True)]
    return tuple((gap // 2, gap - gap // 2) for gap in gaps)


def _region(start_ijk: Sequence[int], roi_ijk: Sequence[int]) -> tuple[slice, slice, slice]:
    return tuple(slice(s, s + r) for s, r in zip(reversed(start_ijk), reversed(roi_ijk), strict=True))


@dataclass(frozen=True)
class WindowPlan:
    """Where the windows lie on the padded volume, and which of them the network has to compute.

    A window whose voxels all hold one value (air after clipping, padding) always gets the same network output,
    so the network runs once per such value and the other windows of that value repeat it: exact, since their
    inputs are identical.
    """

    roi: tuple[int, int, int]  # (i, j, k)
    padding: tuple[tuple[int, int], ...]  # (before, after) zeros per axis (i, j, k)
    starts: list[tuple[int, int, int]]  # (i, j, k) start of every window on the padded volume, in MONAI's order
    computed: list[int]  # the windows the network runs, in the order it runs them
    repeats: dict[int, int]  # a constant window → the computed window whose output it repeats

    def region(self, index: int) -> tuple[slice, slice, slice]:
        """Array slices ``[k, j, i]`` of one window on the padded volume."""
        return _region(self.starts[index], self.roi)

    def unpad(self, padded):
        """``padded`` (``[..., k, j, i]``) without the padding: the input volume's extent."""
        (i0, i1), (j0, j1), (k0, k1) = self.padding
        k, j, i = padded.shape[-3:]
        return padded[..., k0 : k - k1, j0 : j - j1, i0 : i - i1]


def plan_windows(volume, roi_ijk: Sequence[int], overlap: float) -> tuple[Any, WindowPlan]:
    """``volume`` (``[channels, k, j, i]``) padded with zeros up to the ROI, and the plan of its windows."""
    import torch

    roi = tuple(int(r) for r in roi_ijk)
    padding = symmetric_padding(tuple(volume.shape[1:][::-1]), roi)
    if any(sum(pair) for pair in padding):
        flat = [value for pair in padding for value in pair]  # F.pad wants the last dim (i) first
        volume = torch.nn.functional.pad(volume, flat, mode="constant", value=0.0)
    starts = window_grid(tuple(volume.shape[1:][::-1]), roi, overlap)
    computed: list[int] = []
    repeats: dict[int, int] = {}
    computed_for: dict[float, int] = {}  # a constant value → the window computed for it
    for index, start in enumerate(starts):
        low, high = torch.aminmax(volume[(slice(None), *_region(start, roi))])
        value = float(low)
        if value == float(high) and (value in computed_for or len(computed_for) < _MAX_CONSTANT_VALUES):
            if value in computed_for:
                repeats[index] = computed_for[value]
                continue
            computed_for[value] = index
        computed.append(index)
    return volume, WindowPlan(roi, padding, starts, computed, repeats)


# The network's tensor dimension of each axis a flip names: MONAI's layout [batch, channels, i, j, k].
FLIP_DIMS = {"i": 2, "j": 3, "k": 4}


def batch_predictor(
    network: Callable, device: Any, amp: bool = False, flip_tta: bool = False, flip: str = ""
) -> Callable:
    """A function from a batch of windows ``[batch, channels, k, j, i]`` to the network's float32 outputs.

    ``flip`` (axes of ``i``, ``j``, ``k``): the network sees each window mirrored along them, and its output is
    mirrored back; one member of ``segment --uncertainty tta``.
    """
    import torch

    autocast = torch.autocast("cuda", dtype=torch.float16) if amp and device.type == "cuda" else nullcontext()
    mirror = tuple(FLIP_DIMS[axis] for axis in flip)

    def predict(batch):
        batch = batch.to(device, non_blocking=True).permute(0, 1, 4, 3, 2)
        with torch.inference_mode(), autocast:
            logits = network(batch.flip(mirror)).float().flip(mirror) if mirror else network(batch).float()
            if flip_tta:
                for dims in ((2,), (3,), (4,)):
                    logits = logits + network(batch.flip(dims)).float().flip(dims)
                logits = logits / 4.0
        return logits.permute(0, 1, 4, 3, 2)

    return predict


def stitch_windows(
    padded,
    plan: WindowPlan,
    predict: Callable,
    num_classes: int,
    weights,
    sw_batch_size: int = 1,
    progress: Callable[[int, int], None] | None = None,
):
    """The weighted average of every window's prediction, ``[classes, k, j, i]`` on the padded volume.

    Outputs accumulate on ``weights``' device.  The computed windows are added in batch order and the repeated
    ones after them, so the sums (and their rounding) are the same on every run.
    """
    import torch

    stitch_device = weights.device
    out = torch.zeros((num_classes, *padded.shape[1:]), dtype=torch.float32, device=stitch_device)
    count = torch.zeros(padded.shape[1:], dtype=torch.float32, device=stitch_device)

    def add(index: int, prediction) -> None:
        region = plan.region(index)
        out[(slice(None), *region)] += prediction * weights
        count[region] += weights

    repeated = set(plan.repeats.values())
    kept: dict[int, object] = {}  # outputs of the computed windows that constant windows repeat
    total = len(plan.computed)
    for first in range(0, total, sw_batch_size):
        batch_index = plan.computed[first : first + sw_batch_size]
        batch = torch.stack([padded[(slice(None), *plan.region(n))] for n in batch_index])
        for index, prediction in zip(batch_index, predict(batch).to(stitch_device), strict=True):
            add(index, prediction)
            if index in repeated:
                kept[index] = prediction
        if progress:
            progress(min(first + sw_batch_size, total), total)
    for index, source in plan.repeats.items():
        add(index, kept[source])
    out /= count
    return out


@dataclass
class Stitched:
    """The stitched network output and what it cost."""

    logits: Any  # torch.Tensor [classes, k, j, i]: the network's raw outputs averaged over the windows
    windows: int  # windows that cover the volume
    computed: int  # of those, the windows the network ran; the others repeated a constant window's output


def sliding_window(
    volume,
    network: Callable,
    roi_ijk: Sequence[int],
    num_classes: int,
    overlap: float,
    sw_batch_size: int = 1,
    blend: str = "constant",
    device=None,
    stitch_device=None,
    amp: bool = False,
    flip_tta: bool = False,
    progress: Callable[[int, int], None] | None = None,
    flip: str = "",
) -> Stitched:
    """Average the network's raw outputs over windows of ``volume`` (``[channels, k, j, i]``).

    The logits lie on ``stitch_device`` (default: ``device``, then the volume's).  ``progress(done, total)`` is
    called after each batch, counting the windows the network computes.  ``flip``: see :func:`batch_predictor`.
    """
    import torch

    device = torch.device(device or volume.device)
    stitch_device = torch.device(stitch_device or device)
    padded, plan = plan_windows(volume, roi_ijk, overlap)
    predict = batch_predictor(network, device, amp, flip_tta, flip)
    weights = importance_map(plan.roi, blend, stitch_device)
    out = stitch_windows(padded, plan, predict, num_classes, weights, sw_batch_size, progress)
    return Stitched(plan.unpad(out), len(plan.starts), len(plan.computed))
