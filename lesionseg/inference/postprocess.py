"""Clean-up of a labelmap, label by label: largest component, minimum component volume, hole filling."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from lesionseg.image import Image
from lesionseg.models.spec import PostprocessSpec

_CONNECTIVITY = ndimage.generate_binary_structure(3, 1)  # face neighbours, as Slicer's islands tool


def postprocess(labelmap: Image, options: PostprocessSpec) -> Image:
    """Apply the spec's post-processing; returns a new image on the same grid."""
    if not (options.keep_largest_component or options.min_component_mm3 > 0 or options.fill_holes):
        return labelmap
    array = labelmap.array.copy()
    min_voxels = options.min_component_mm3 / labelmap.voxel_volume_mm3
    for value in [int(v) for v in np.unique(array) if v != 0]:
        mask = array == value
        if options.keep_largest_component or min_voxels > 0:
            components, count = ndimage.label(mask, structure=_CONNECTIVITY)
            if count:
                sizes = np.bincount(components.ravel())[1:]
                keep = sizes >= min_voxels
                if options.keep_largest_component:
                    keep &= np.arange(1, count + 1) == 1 + int(np.argmax(sizes))
                drop = mask & ~np.concatenate([[False], keep])[components]
                array[drop] = 0
                mask &= ~drop
        if options.fill_holes:
            filled = ndimage.binary_fill_holes(mask) & (array == 0)
            array[filled] = value
    return labelmap.with_array(array)
