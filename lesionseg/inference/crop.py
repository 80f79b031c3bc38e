"""Crops: the body (the box around the largest region denser than air) and a cascade's region, each plus a margin.

The crop is applied on the network's grid after resampling, so voxels inside the box are sampled exactly
as without the crop; only the windows outside it are skipped (they would see air).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from lesionseg.image import Image

BODY_THRESHOLD_HU = -500.0


def body_box_world(image: Image, threshold: float = BODY_THRESHOLD_HU) -> np.ndarray | None:
    """LPS corners (8×3) of the bounding box of the largest component above ``threshold``; None if none."""
    mask = image.array > threshold
    if not mask.any():
        return None
    # Label on a coarse copy: the body is large, and labelling a full CT costs seconds.
    step = max(1, int(round(min(image.array.shape[1:]) / 128)))
    coarse = mask[:, ::step, ::step]
    components, count = ndimage.label(coarse)
    if count == 0:
        return None
    largest = 1 + int(np.argmax(np.bincount(components.ravel())[1:]))
    kk, jj, ii = np.nonzero(components == largest)
    lo = np.array([ii.min() * step, jj.min() * step, kk.min()], dtype=float)
    hi = np.array(
        [
            min(ii.max() * step + step - 1, image.size[0] - 1),
            min(jj.max() * step + step - 1, image.size[1] - 1),
            kk.max(),
        ],
        dtype=float,
    )
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    return image.world(corners)


def box_on_grid(corners_lps: np.ndarray, grid: Image, margin_mm: float) -> tuple[slice, slice, slice]:
    """Array slices ``[k, j, i]`` of ``grid`` covering the box plus ``margin_mm`` on every side."""
    ijk = grid.index(corners_lps)
    margin = margin_mm / grid.spacing
    lo = np.maximum(np.floor(ijk.min(axis=0) - margin), 0).astype(int)
    hi = np.minimum(np.ceil(ijk.max(axis=0) + margin), np.array(grid.size) - 1).astype(int)
    return slice(lo[2], hi[2] + 1), slice(lo[1], hi[1] + 1), slice(lo[0], hi[0] + 1)


def region_around_labels(labelmap: Image, margin_mm: float) -> tuple[slice, slice, slice] | None:
    """Array slices ``[k, j, i]`` of the box around every labelled voxel plus ``margin_mm``; None when empty."""
    found = np.nonzero(labelmap.array)
    if len(found[0]) == 0:
        return None
    margin = np.ceil(margin_mm / np.asarray(labelmap.spacing, dtype=float))[::-1].astype(int)  # (k, j, i)
    low = np.maximum([f.min() for f in found] - margin, 0)
    high = np.minimum([f.max() + 1 for f in found] + margin, labelmap.array.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))
