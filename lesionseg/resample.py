"""Resampling an image onto another image's grid, in physical space."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from lesionseg.image import Image
from lesionseg.io.sitk import from_sitk, to_sitk

_INTERPOLATORS = {
    "nearest": sitk.sitkNearestNeighbor,
    "linear": sitk.sitkLinear,
    "bspline": sitk.sitkBSpline,
}


def resample_to(image: Image, reference: Image, interpolation: str = "nearest", default: float = 0) -> Image:
    """``image`` sampled at ``reference``'s voxel centres; points outside ``image`` get ``default``.

    Use ``"nearest"`` for labelmaps (labels are never blended) and ``"linear"`` for intensities.
    The result keeps ``image``'s voxel type.
    """
    if interpolation not in _INTERPOLATORS:
        raise ValueError(f"unknown interpolation {interpolation!r}; use one of {sorted(_INTERPOLATORS)}")
    if image.same_grid(reference):
        return image.copy()
    moving = to_sitk(image)
    out = sitk.Resample(
        moving, to_sitk(reference), sitk.Transform(), _INTERPOLATORS[interpolation], float(default), moving.GetPixelID()
    )
    result = from_sitk(out)
    # ITK writes the reference grid back; keep the reference's exact numbers, not float round trips.
    return reference.with_array(result.array.astype(image.array.dtype, copy=False))


def resample_to_spacing(image: Image, spacing: tuple[float, float, float], interpolation: str = "linear") -> Image:
    """``image`` on a grid with the same origin and direction, covering the same extent at ``spacing``."""
    spacing_arr = np.asarray(spacing, dtype=float)
    if spacing_arr.shape != (3,) or np.any(spacing_arr <= 0):
        raise ValueError(f"spacing must be three positive values in mm, got {spacing!r}")
    extent = np.array(image.size) * image.spacing
    size = np.maximum(np.round(extent / spacing_arr).astype(int), 1)
    grid = Image(np.zeros(size[::-1], np.uint8), spacing_arr, image.origin, image.direction)
    return resample_to(image, grid, interpolation)
