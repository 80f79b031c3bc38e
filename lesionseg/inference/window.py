"""Sliding-window inference with a progress callback per batch of windows.

Window placement, padding and blending follow MONAI's ``sliding_window_inference`` (same starts, same
symmetric zero padding for volumes smaller than the ROI, raw network outputs averaged), so our stitched
logits equal MONAI's.  Owning the loop lets us report real progress, keep the stitched output on another
device than the network, and stop between batches.

The volume is ``[channels, k, j, i]`` (engine order); the network receives MONAI's ``[batch, channels, i, j, k]``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext

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


def importance_map(roi_ijk: Sequence[int], blend: str, device) -> "torch.Tensor":  # noqa: F821
    """Blending weights ``[k, j, i]`` for one window."""
    import torch

    if blend == "constant":
        return torch.ones(tuple(reversed(roi_ijk)), device=device)
    from monai.data.utils import compute_importance_map

    weights = compute_importance_map(tuple(roi_ijk), mode="gaussian", sigma_scale=0.125, device=device)
    return weights.permute(2, 1, 0).contiguous().float()


def sliding_window(
    volume,
    network: Callable,
    roi_ijk: Sequence[int],
    num_classes: int,
    overlap: float = 0.25,
    sw_batch_size: int = 1,
    blend: str = "constant",
    device=None,
    stitch_device=None,
    amp: bool = False,
    flip_tta: bool = False,
    progress: Callable[[int, int], None] | None = None,
    stats: dict | None = None,
):
    """Average the network's raw outputs over windows; returns ``[classes, k, j, i]`` on ``stitch_device``."""
    import torch

    device = torch.device(device or volume.device)
    stitch_device = torch.device(stitch_device or device)
    roi = tuple(int(r) for r in roi_ijk)
    size_kji = tuple(volume.shape[1:])
    size_ijk = tuple(reversed(size_kji))
    # Symmetric zero padding up to the ROI, as MONAI does for small volumes.
    pad_ijk = [(max(r - n, 0) // 2, max(r - n, 0) - max(r - n, 0) // 2) for n, r in zip(size_ijk, roi, strict=True)]
    if any(sum(p) for p in pad_ijk):
        flat = [value for pair in pad_ijk for value in pair]  # F.pad wants the last dim (i) first
        volume = torch.nn.functional.pad(volume, flat, mode="constant", value=0.0)
    padded_ijk = tuple(volume.shape[1:][::-1])
    starts = window_grid(padded_ijk, roi, overlap)
    weights = importance_map(roi, blend, stitch_device)
    out = torch.zeros((num_classes, *volume.shape[1:]), dtype=torch.float32, device=stitch_device)
    count = torch.zeros(volume.shape[1:], dtype=torch.float32, device=stitch_device)
    autocast = torch.autocast("cuda", dtype=torch.float16) if amp and device.type == "cuda" else nullcontext()

    def window(start: tuple[int, int, int]):
        i, j, k = start
        return volume[:, k : k + roi[2], j : j + roi[1], i : i + roi[0]]

    def stitch(start: tuple[int, int, int], prediction) -> None:
        i, j, k = start
        region = (slice(k, k + roi[2]), slice(j, j + roi[1]), slice(i, i + roi[0]))
        out[(slice(None), *region)] += prediction * weights
        count[region] += weights

    # A window whose voxels all hold one value (air after clipping, padding) always gets the same network
    # output: run the network once per such value and reuse it.  Exact, since the inputs are identical.
    constant: dict[int, float] = {}
    runs_for: dict[float, int] = {}
    to_run: list[int] = []
    for index, start in enumerate(starts):
        low, high = torch.aminmax(window(start))
        value = float(low)
        if value == float(high) and (value in runs_for or len(runs_for) < _MAX_CONSTANT_VALUES):
            constant[index] = value
            if value in runs_for:
                continue
            runs_for[value] = index
        to_run.append(index)
    cached: dict[float, object] = {}
    total = len(to_run)
    if stats is not None:
        stats.update(windows=len(starts), computed=total)
    for first in range(0, total, sw_batch_size):
        batch_index = to_run[first : first + sw_batch_size]
        batch = torch.stack([window(starts[n]) for n in batch_index]).to(device, non_blocking=True)
        batch = batch.permute(0, 1, 4, 3, 2)
        with torch.inference_mode(), autocast:
            logits = network(batch).float()
            if flip_tta:
                for dims in ((2,), (3,), (4,)):
                    logits = logits + network(batch.flip(dims)).float().flip(dims)
                logits = logits / 4.0
        logits = logits.permute(0, 1, 4, 3, 2).to(stitch_device)
        for index, prediction in zip(batch_index, logits, strict=True):
            stitch(starts[index], prediction)
            if index in constant:
                cached[constant[index]] = prediction
        if progress:
            progress(min(first + sw_batch_size, total), total)
    for index, value in constant.items():
        if runs_for[value] != index:
            stitch(starts[index], cached[value])
    out /= count
    (pi0, pi1), (pj0, pj1), (pk0, pk1) = pad_ijk
    return out[:, pk0 : out.shape[1] - pk1, pj0 : out.shape[2] - pj1, pi0 : out.shape[3] - pi1]


def count_windows(size_ijk: Sequence[int], roi_ijk: Sequence[int], overlap: float) -> int:
    padded = [max(n, r) for n, r in zip(size_ijk, roi_ijk, strict=True)]
    return int(np.prod([len(window_starts(n, r, overlap)) for n, r in zip(padded, roi_ijk, strict=True)]))
