"""The per-lesion table against analytic sizes, positions and intensities of synthetic lesions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from support.geometries import rotation
from support.metric_shapes import ball, box, labelmap

from lesionseg.image import Image
from lesionseg.metrics import lesion_table
from lesionseg.metrics.lesions import axial_axis

LPS_FLIPPED = np.diag([-1.0, -1.0, 1.0])  # the usual DICOM axial grid: i towards patient right


def test_twenty_mm_sphere_has_analytic_volume_diameter_and_ras_centroid():
    shape = (64, 64, 64)
    centre_ijk = (30, 33, 31)
    image = labelmap([(ball(shape, centre_ijk, 10.0, (1, 1, 1)), 1)], origin=(-20, 10, 5), direction=LPS_FLIPPED)
    (row,) = lesion_table(image)
    assert row["volume_ml"] * 1000 == pytest.approx(4 / 3 * math.pi * 10**3, rel=0.03)
    assert abs(row["longest_axial_diameter_mm"] - 20.0) <= 1.0
    x, y, z = image.world(centre_ijk)  # LPS
    assert row["centroid_ras_mm"] == pytest.approx([-x, -y, z], abs=1e-9)
    # By hand: i runs towards the patient's right, so R = 20 + i; j runs anterior, so A = -10 + j.
    assert row["centroid_ras_mm"] == pytest.approx([20 + 30, -10 + 33, 5 + 31], abs=1e-9)
    assert row["mean_hu"] is None and row["max_hu"] is None


def test_box_volume_and_in_plane_diagonal_on_anisotropic_voxels():
    spacing = (0.8, 0.6, 3.0)
    image = labelmap([(box((16, 32, 32), (4, 5, 3), (10, 6, 4)), 1)], spacing=spacing)
    (row,) = lesion_table(image)
    assert row["voxels"] == 240
    assert row["volume_ml"] == pytest.approx(240 * 0.8 * 0.6 * 3.0 / 1000)
    # Between voxel centres: the in-plane diagonal spans 9 × 0.8 mm by 5 × 0.6 mm.
    assert row["longest_axial_diameter_mm"] == pytest.approx(math.hypot(9 * 0.8, 5 * 0.6))


def test_axial_plane_follows_the_direction_when_image_axes_are_permuted():
    # Image axis j points along the patient z axis, so axial slices are planes of constant j.
    direction = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    spacing = (0.8, 3.0, 0.6)
    image = labelmap([(box((32, 16, 32), (4, 3, 5), (10, 4, 6)), 1)], spacing=spacing, direction=direction)
    assert axial_axis(direction) == (1, 0.0)
    (row,) = lesion_table(image)
    assert row["longest_axial_diameter_mm"] == pytest.approx(math.hypot(9 * 0.8, 5 * 0.6))


def test_tilted_grid_measures_in_its_own_slices_and_reports_the_tilt():
    axis, tilt = axial_axis(rotation("x", 10) @ LPS_FLIPPED)
    assert axis == 2 and tilt == pytest.approx(10.0)
    image = labelmap([(ball((32, 32, 32), (16, 16, 16), 8.0, (1, 1, 1)), 1)], direction=rotation("x", 10))
    (row,) = lesion_table(image)
    assert row["longest_axial_diameter_mm"] == pytest.approx(16.0)


def test_ct_gives_mean_and_max_hounsfield_units_inside_each_lesion():
    shape = (16, 32, 32)
    lesion = box(shape, (4, 4, 4), (3, 3, 3))
    labels = labelmap([(lesion, 1)])
    ct = np.full(shape, -1000, dtype=np.int16)
    ct[lesion] = 40
    ct[5, 5, 5] = 310  # one hot voxel inside the lesion
    (row,) = lesion_table(labels, Image(ct))
    assert row["max_hu"] == 310.0
    assert row["mean_hu"] == pytest.approx((26 * 40 + 310) / 27)


def test_rows_are_one_per_component_largest_first_with_their_label():
    shape = (20, 40, 40)
    image = labelmap(
        [
            (box(shape, (2, 2, 2), (2, 2, 2)), 1),
            (box(shape, (20, 20, 5), (4, 4, 4)), 2),
            (box(shape, (30, 5, 12), (3, 3, 3)), 1),
            (box(shape, (10, 30, 12), (1, 1, 1)), 2),
        ]
    )
    rows = lesion_table(image)
    assert [(r["id"], r["label"], r["voxels"]) for r in rows] == [(1, 2, 64), (2, 1, 27), (3, 1, 8), (4, 2, 1)]
    assert rows[-1]["longest_axial_diameter_mm"] == 0.0  # a single voxel has no extent between centres
    assert [r["voxels"] for r in lesion_table(image, min_volume_mm3=8.0)] == [64, 27, 8]
    assert [r["label"] for r in lesion_table(image, labels=[1])] == [1, 1]


def test_ct_on_another_grid_is_refused():
    labels = labelmap([(box((8, 8, 8), (1, 1, 1), (2, 2, 2)), 1)])
    ct = Image(np.zeros((8, 8, 8), dtype=np.int16), spacing=(1, 1, 2))
    with pytest.raises(ValueError, match="resample"):
        lesion_table(labels, ct)
