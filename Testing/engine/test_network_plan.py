"""The way to the network and back (NetworkPlan): every step taken on the way in is undone on the way out."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from support.geometries import rotation

from lesionseg.image import Image
from lesionseg.inference.plan import NetworkPlan
from lesionseg.models.spec import IntensitySpec, PreprocessSpec

SHAPE_KJI = (5, 6, 7)
OBLIQUE = rotation("x", 25) @ rotation("z", 35)
MIRRORED_PERMUTATION = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def numbered_image(direction: np.ndarray) -> Image:
    """Every voxel a different value from 1 to 210, so a swapped, flipped or shifted axis changes the result."""
    values = np.arange(1, np.prod(SHAPE_KJI) + 1, dtype=np.int16).reshape(SHAPE_KJI)
    return Image(values, (1.2, 0.9, 2.5), (-14.0, 30.0, 7.5), direction)


def inside_region(image: Image, plan: NetworkPlan) -> np.ndarray:
    """The input voxels whose centres fall in the plan's crop, found from physical points, not from the plan's maps."""
    k, j, i = np.indices(image.array.shape)
    ijk = np.rint(plan.grid.index(image.world(np.stack([i, j, k], axis=-1).reshape(-1, 3))))
    inside = np.ones(len(ijk), dtype=bool)
    for axis, cut in zip((2, 1, 0), plan.region, strict=True):  # region is [k, j, i]
        inside &= (ijk[:, axis] >= cut.start) & (ijk[:, axis] < cut.stop)
    return inside.reshape(image.array.shape)


@pytest.mark.parametrize(
    ("direction", "upsample"),
    [(OBLIQUE, False), (MIRRORED_PERMUTATION, True)],
    ids=["oblique", "mirrored-permuted-resampled"],
)
def test_network_plan_round_trip_returns_the_input_grid_and_values(direction, upsample):
    image = numbered_image(direction)
    pre = PreprocessSpec("RAS", None, IntensitySpec("range"), orientation_quirk="compensate")
    if upsample:
        # Half the spacing on every axis: the grid's every other voxel is an input voxel, so the way back is exact.
        spacing = NetworkPlan.for_image(image, pre).reoriented.spacing / 2.0
        pre = replace(pre, spacing=tuple(spacing))
    plan = NetworkPlan.for_image(image, pre)
    grid_kji = plan.grid.array.shape
    region = tuple(slice(1, n - 2) for n in grid_kji)
    plan = plan.cropped(region)

    network_input = plan.to_network("cpu")
    assert network_input.shape == (1, *(n - 3 for n in grid_kji))
    unmirrored = replace(plan, mirrored=False).to_network("cpu")
    torch.testing.assert_close(network_input, unmirrored.flip(-1, -2), rtol=0, atol=0)

    back = plan.to_input(plan.from_network(network_input), outside=[0.0], decide=lambda slab: slab[0])
    assert back.same_grid(image)
    inside = inside_region(image, plan)
    assert 0 < inside.sum() < inside.size, "the crop must cut some voxels and keep others"
    np.testing.assert_array_equal(back.array, np.where(inside, image.array, 0))
