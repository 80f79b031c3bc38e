"""The network's grid and the linear resampling between it and the input grid.

MONAI's ``Spacingd`` keeps the image's axes (only their lengths change), so after reorientation the target
grid's axes are parallel to the input's.  Trilinear interpolation is then three 1D linear interpolations, one
per axis, which is far cheaper than a 3D ``grid_sample``.  The grid follows MONAI's ``compute_shape_offset``:
it starts at voxel 0 of the input, and ``n_out = round((n_in - 1) * s_in / s_out + 1)``; samples beyond the
last input voxel repeat it (MONAI's ``border`` padding).

Volumes here are torch tensors laid out like the engine's arrays: ``[..., k, j, i]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AxisMap:
    """Linear interpolation weights taking ``n_from`` samples to ``n_to`` samples along one axis."""

    lower: np.ndarray  # int64 index of the left neighbour
    upper: np.ndarray
    weight: np.ndarray  # float32 weight of the upper neighbour

    @property
    def identity(self) -> bool:
        return bool(np.all(self.weight == 0) and np.array_equal(self.lower, np.arange(len(self.lower))))


def axis_map(n_from: int, n_to: int, step: float, start: float = 0.0) -> AxisMap:
    """Sample ``n_to`` points at ``start + m * step`` (source voxel units) from ``n_from`` samples, border clamped."""
    pos = np.clip(start + np.arange(n_to, dtype=np.float64) * step, 0.0, n_from - 1)
    lower = np.floor(pos).astype(np.int64)
    # Snap positions within float noise of a sample so identity maps stay exact.
    near = np.abs(pos - np.round(pos)) < 1e-6
    lower[near] = np.round(pos[near]).astype(np.int64)
    weight = np.where(near, 0.0, pos - lower).astype(np.float32)
    upper = np.minimum(lower + 1, n_from - 1)
    return AxisMap(lower, upper, weight)


def is_axis_aligned(direction: np.ndarray) -> bool:
    return bool(np.abs(np.abs(direction) - np.round(np.abs(direction))).max() < 1e-6)


def grid_starts(size_ijk: Sequence[int], shape_ijk: Sequence[int], step_ijk: Sequence[float], aligned: bool) -> tuple:
    """Input index of the network grid's voxel 0 along each axis, as MONAI's ``compute_shape_offset`` picks it.

    MONAI keeps voxel 0 where it is when its corner test passes, which happens for axis-aligned grids; on an
    oblique grid (a float32 NIfTI affine) the test fails on rounding and MONAI centres the new grid on the old
    one instead, with centres at ``shape / 2``.
    """
    if aligned:
        return (0.0, 0.0, 0.0)
    return tuple(n / 2.0 - m / 2.0 * step for n, m, step in zip(size_ijk, shape_ijk, step_ijk, strict=True))


def target_shape_ijk(size_ijk: Sequence[int], spacing_ijk: Sequence[float], target: Sequence[float] | None) -> tuple:
    if target is None:
        return tuple(int(n) for n in size_ijk)
    return tuple(int(np.round((n - 1) * s / t + 1.0)) for n, s, t in zip(size_ijk, spacing_ijk, target, strict=True))


def interpolate_axis(volume, dim: int, amap: AxisMap):
    """Linear interpolation of a torch tensor along ``dim`` with precomputed weights."""
    import torch

    if amap.identity and volume.shape[dim] == len(amap.lower):
        return volume
    lower = torch.from_numpy(amap.lower).to(volume.device)
    upper = torch.from_numpy(amap.upper).to(volume.device)
    shape = [1] * volume.ndim
    shape[dim] = -1
    weight = torch.from_numpy(amap.weight).to(volume.device, volume.dtype).reshape(shape)
    low = volume.index_select(dim, lower)
    high = volume.index_select(dim, upper)
    return torch.lerp(low, high, weight, out=low)  # in place: one full-size buffer fewer to allocate and fault in


def _pass_order(shape_kji: Sequence[int], maps_kji: Sequence[AxisMap]) -> list[int]:
    return sorted(range(3), key=lambda a: len(maps_kji[a].lower) / max(shape_kji[a], 1))


def resample_separable(volume, maps_kji: Sequence[AxisMap]):
    """Resample the last three dims (k, j, i) of ``volume``; the most shrinking axis goes first."""
    for axis in _pass_order(volume.shape[-3:], maps_kji):
        volume = interpolate_axis(volume, volume.ndim - 3 + axis, maps_kji[axis])
    return volume


def first_pass_voxels(shape_kji: Sequence[int], maps_kji: Sequence[AxisMap]) -> int:
    """Voxels of the float32 volume that :func:`resample_array_in_slabs` holds after its first pass."""
    first = _pass_order(shape_kji, maps_kji)[0]
    shape = list(shape_kji)
    shape[first] = len(maps_kji[first].lower)
    return int(np.prod(shape))


def resample_array_in_slabs(array: np.ndarray, maps_kji: Sequence[AxisMap], device, slab_voxels: int = 1 << 22):
    """``resample_separable`` of a (k, j, i) numpy array of any dtype, returning float32 on ``device``.

    The first (most shrinking) pass runs slab by slab along another axis, so neither a full-size float32 copy of the
    input nor the pass's full-size gather buffers ever exist: the peak is the input plus the first pass's output.
    Linear interpolation along one axis is independent across the others, so the result equals the one-shot
    resampling exactly.
    """
    import torch

    first = _pass_order(array.shape, maps_kji)[0]
    across = max((a for a in range(3) if a != first), key=lambda a: array.shape[a])
    out_shape = list(array.shape)
    out_shape[first] = len(maps_kji[first].lower)
    voxels_per_slice = max(1, int(np.prod(array.shape)) // max(array.shape[across], 1))
    step = max(1, slab_voxels // voxels_per_slice)
    out = torch.empty(out_shape, dtype=torch.float32, device=device)
    for start in range(0, array.shape[across], step):
        index = [slice(None)] * 3
        index[across] = slice(start, start + step)
        piece = torch.from_numpy(np.ascontiguousarray(array[tuple(index)])).to(device, torch.float32)
        out[tuple(index)] = interpolate_axis(piece, first, maps_kji[first])
    for axis in _pass_order(array.shape, maps_kji)[1:]:
        out = interpolate_axis(out, axis, maps_kji[axis])
    return out
