"""Voxel-edge contour tracing and the small pieces of the RTSTRUCT writer, without DICOM files."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from support.plastimatch import fill_each_and_or

from lesionseg.labels import LabelInfo
from lesionseg.rtstruct.build import format_ds
from lesionseg.rtstruct.contours import mask_polygons, split_rows
from lesionseg.rtstruct.segments import parse_names, resolve_labels


@settings(max_examples=150, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_any_mask_is_rebuilt_exactly_from_its_polygons(mask):
    polygons = mask_polygons(mask)
    np.testing.assert_array_equal(fill_each_and_or(polygons, mask.shape), mask)
    for polygon in polygons:
        # Every vertex sits on a voxel corner, never on a pixel centre.
        np.testing.assert_array_equal(np.mod(polygon, 1.0), 0.5)


def test_single_voxel_becomes_a_four_point_square():
    mask = np.zeros((5, 5), dtype=bool)
    mask[2, 3] = True
    (polygon,) = mask_polygons(mask)
    assert sorted(map(tuple, polygon.tolist())) == [(2.5, 1.5), (2.5, 2.5), (3.5, 1.5), (3.5, 2.5)]


def test_ring_is_one_keyhole_polygon_whose_hole_stays_empty():
    jj, ii = np.mgrid[0:40, 0:40]
    radius = np.hypot(jj - 20, ii - 20)
    ring = (radius < 15) & (radius > 6)
    polygons = mask_polygons(ring)
    assert len(polygons) == 1
    rebuilt = fill_each_and_or(polygons, ring.shape)
    assert not rebuilt[20, 20]
    np.testing.assert_array_equal(rebuilt, ring)
    # The cut runs along voxel edges: consecutive vertices differ in one coordinate only.
    steps = np.diff(np.vstack([polygons[0], polygons[0][:1]]), axis=0)
    assert np.all((steps[:, 0] == 0) | (steps[:, 1] == 0))


def test_island_inside_a_hole_and_diagonal_neighbours_are_separate_pieces():
    mask = np.zeros((12, 12), dtype=bool)
    mask[1:11, 1:11] = True
    mask[3:9, 3:9] = False
    mask[5:7, 5:7] = True  # an island in the hole
    mask[0, 11] = True  # touches the square only at a corner
    polygons = mask_polygons(mask)
    assert len(polygons) == 3
    np.testing.assert_array_equal(fill_each_and_or(polygons, mask.shape), mask)


def test_split_rows_gives_pieces_that_add_back_to_the_mask():
    mask = np.zeros((10, 6), dtype=bool)
    mask[2:9, 1:5] = True
    top, bottom = split_rows(mask)
    assert not (top & bottom).any()
    np.testing.assert_array_equal(top | bottom, mask)
    assert top.any() and bottom.any()


def test_ds_text_fits_sixteen_characters_and_keeps_micrometres():
    values = np.array([-99999999.9999994, 0.1 + 0.2, -0.0, 1e-7, 123.4560001, 42.0])
    text = format_ds(values)
    parts = text.split("\\")
    assert all(len(p) <= 16 for p in parts), parts
    assert parts[2] == "0.0" and parts[3] == "0.0" and parts[5] == "42.0"  # no "-0.0"
    randoms = np.random.default_rng(7).uniform(-1, 1, 20000) * 10.0 ** np.random.default_rng(8).integers(-9, 8, 20000)
    random_parts = format_ds(randoms).split("\\")
    assert max(map(len, random_parts)) <= 16
    np.testing.assert_allclose(np.array(random_parts, float), randoms, atol=1e-6, rtol=0)
    np.testing.assert_allclose([float(p) for p in parts], values, atol=1e-6)
    with pytest.raises(ValueError, match="too large"):
        format_ds(np.array([1e9]))


def test_names_parse_and_name_precedence():
    assert parse_names("1=Spleen, 2=Liver") == {1: "Spleen", 2: "Liver"}
    for bad in ("1:Spleen", "x=Liver", "0=Background", "3="):
        with pytest.raises(ValueError, match="--names"):
            parse_names(bad)
    known = [LabelInfo(1, "spleen_from_file", (0.1, 0.2, 0.3))]
    chosen, absent = resolve_labels({1, 2}, {1: "Spleen", 7: "Kidney"}, known)
    assert [(i.value, i.name, i.color) for i in chosen] == [(1, "Spleen", (0.1, 0.2, 0.3))]
    assert absent == [7]
    chosen, absent = resolve_labels({1, 2}, None, known)
    assert [i.name for i in chosen] == ["spleen_from_file", "Label_2"] and absent == []
