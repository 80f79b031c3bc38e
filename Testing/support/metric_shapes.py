"""Synthetic labelmaps of known geometry for the metric and evaluation tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lesionseg.image import Image


def ball(
    shape_kji: Sequence[int], centre_ijk: Sequence[float], radius_mm: float, spacing: Sequence[float]
) -> np.ndarray:
    """Voxels whose centres lie within ``radius_mm`` of ``centre_ijk`` (index units), on a [k, j, i] array."""
    k, j, i = np.indices(tuple(shape_kji), dtype=np.float64)
    sx, sy, sz = spacing
    ci, cj, ck = centre_ijk
    return ((i - ci) * sx) ** 2 + ((j - cj) * sy) ** 2 + ((k - ck) * sz) ** 2 <= radius_mm**2


def box(shape_kji: Sequence[int], start_ijk: Sequence[int], size_ijk: Sequence[int]) -> np.ndarray:
    """A boolean box of ``size_ijk`` voxels starting at ``start_ijk``."""
    out = np.zeros(tuple(shape_kji), dtype=bool)
    (i0, j0, k0), (ni, nj, nk) = start_ijk, size_ijk
    out[k0 : k0 + nk, j0 : j0 + nj, i0 : i0 + ni] = True
    return out


def labelmap(layers: Sequence[tuple[np.ndarray, int]], **grid) -> Image:
    """A uint8 labelmap painted from (mask, value) layers in order; ``grid`` goes to :class:`Image`."""
    array = np.zeros(layers[0][0].shape, dtype=np.uint8)
    for mask, value in layers:
        array[mask] = value
    return Image(array, **grid)


def blobs(shape_kji: Sequence[int], seed: int, count: int = 6, spacing: Sequence[float] = (1, 1, 1)) -> np.ndarray:
    """Several random overlapping balls: an irregular mask with concavities, reproducible by ``seed``."""
    rng = np.random.default_rng(seed)
    out = np.zeros(tuple(shape_kji), dtype=bool)
    size_ijk = np.array(shape_kji[::-1], dtype=float)
    for _ in range(count):
        centre = rng.uniform(0.25, 0.75, 3) * size_ijk
        out |= ball(shape_kji, centre, float(rng.uniform(3.0, 9.0)), spacing)
    return out
