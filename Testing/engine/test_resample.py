"""Resampling a labelmap onto another grid keeps structures in place."""

import numpy as np
import pytest
from support.geometries import make_image

from lesionseg.image import Image
from lesionseg.resample import resample_to, resample_to_spacing


def test_labelmap_resampled_onto_a_flipped_grid_lands_on_the_same_points():
    image = make_image("anisotropic")
    label = image.with_array((image.array % 3 == 0).astype(np.uint8))
    flipped = Image(
        label.array[::-1, ::-1, :].copy(), label.spacing, label.world([0, 8, 6]), np.diag([1.0, -1.0, -1.0])
    )
    back = resample_to(flipped, label, "nearest")
    assert back.same_grid(label)
    np.testing.assert_array_equal(back.array, label.array)


def test_resampling_to_a_coarser_spacing_keeps_the_volume():
    grid = Image(np.zeros((40, 40, 40), np.uint8), (1, 1, 1), (0, 0, 0))
    grid.array[10:30, 10:30, 10:30] = 1
    coarse = resample_to_spacing(grid, (2.0, 2.0, 2.0), "nearest")
    assert coarse.size == (20, 20, 20)
    assert abs(np.count_nonzero(coarse.array) * coarse.voxel_volume_mm3 - 20**3) / 20**3 < 0.1


def test_unknown_interpolation_is_named():
    image = make_image("identity")
    with pytest.raises(ValueError, match="unknown interpolation 'cubic'"):
        resample_to(image, image, "cubic")
