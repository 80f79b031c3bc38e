"""One geometry core: every conversion keeps each voxel at its physical point (to 1e-4 mm)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from support.geometries import (
    NAMED_GEOMETRIES,
    assert_same_physical_image,
    axis_aligned_directions,
    make_image,
    ramp,
)

from lesionseg.image import Image, require_same_grid
from lesionseg.io import read_image, write_image
from lesionseg.io.atomic import atomic_path
from lesionseg.io.sitk import from_sitk, to_sitk
from lesionseg.orientation import orientation_code, reorient

GEOMETRIES = sorted(NAMED_GEOMETRIES)
FILE_SUFFIXES = [".nii.gz", ".nii", ".nrrd", ".mha"]


def test_voxel_world_formula_matches_simpleitk():
    image = make_image("oblique_30_30")
    reference = to_sitk(image)
    for ijk in [(0, 0, 0), (3, 2, 1), (5, 7, 4)]:
        expected = reference.TransformIndexToPhysicalPoint([int(v) for v in ijk])
        np.testing.assert_allclose(image.world(ijk), expected, atol=1e-9)
        np.testing.assert_allclose(image.index(expected), ijk, atol=1e-9)


@pytest.mark.parametrize("name", GEOMETRIES)
def test_simpleitk_round_trip_keeps_every_voxel_in_place(name):
    image = make_image(name)
    back = from_sitk(to_sitk(image))
    assert_same_physical_image(image, back)
    assert back.array.dtype == image.array.dtype


@pytest.mark.parametrize("suffix", FILE_SUFFIXES)
@pytest.mark.parametrize("name", GEOMETRIES)
def test_file_round_trip_keeps_every_voxel_in_place(tmp_path, name, suffix):
    image = make_image(name)
    path = write_image(image, tmp_path / f"volume{suffix}")
    back = read_image(path)
    assert_same_physical_image(image, back)
    assert back.array.dtype == image.array.dtype


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_uncompressed_files_keep_every_voxel_in_place_and_are_stored_raw(tmp_path, suffix):
    """The modules hand their worker a raw NRRD (``compress=False``): same image, read in ITK too, no gzip."""
    image = make_image("oblique_30_30")
    packed = write_image(image, tmp_path / f"packed{suffix}")
    raw = write_image(image, tmp_path / f"raw{suffix}", compress=False)
    assert_same_physical_image(image, read_image(raw))
    assert_same_physical_image(image, from_sitk(sitk.ReadImage(str(raw))))
    np.testing.assert_array_equal(read_image(raw).array, read_image(packed).array)
    voxels = np.ascontiguousarray(image.array).astype("<i2").tobytes()
    assert voxels in raw.read_bytes() and voxels not in packed.read_bytes()


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_files_we_write_read_the_same_in_simpleitk(tmp_path, suffix):
    """An independent reader (ITK) agrees with our NIfTI and NRRD geometry, RAS/LPS flip included."""
    image = make_image("oblique_30_30")
    path = write_image(image, tmp_path / f"volume{suffix}")
    assert_same_physical_image(image, from_sitk(sitk.ReadImage(str(path))))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_files_simpleitk_writes_read_the_same_in_lesionseg(tmp_path, suffix):
    image = make_image("lps_flipped")
    path = tmp_path / f"itk{suffix}"
    sitk.WriteImage(to_sitk(image), str(path))
    assert_same_physical_image(image, read_image(path))


def test_float_ct_keeps_its_values_exactly(tmp_path):
    image = make_image("anisotropic", np.float32)
    image = image.with_array(image.array + np.float32(0.125))
    for suffix in FILE_SUFFIXES:
        back = read_image(write_image(image, tmp_path / f"ct{suffix}"))
        np.testing.assert_array_equal(back.array, image.array)


@settings(max_examples=60, deadline=None)
@given(
    direction_index=st.integers(0, 47),
    spacing=st.tuples(*[st.floats(0.3, 6.0, allow_nan=False)] * 3),
    origin=st.tuples(*[st.floats(-500, 500, allow_nan=False)] * 3),
)
def test_every_axis_aligned_orientation_and_spacing_round_trips(tmp_path_factory, direction_index, spacing, origin):
    direction = axis_aligned_directions()[direction_index]
    image = Image(ramp((3, 4, 5)), spacing, origin, direction)
    assert_same_physical_image(image, from_sitk(to_sitk(image)))
    folder = tmp_path_factory.mktemp("rt")
    for suffix in (".nii.gz", ".nrrd"):
        assert_same_physical_image(image, read_image(write_image(image, folder / f"v{suffix}")))


@settings(max_examples=48, deadline=None)
@given(direction_index=st.integers(0, 47), target_index=st.integers(0, 47))
def test_reorienting_keeps_voxels_at_their_physical_points(direction_index, target_index):
    image = Image(ramp((3, 4, 5)), (0.7, 1.3, 2.9), (10.0, -4.0, 7.5), axis_aligned_directions()[direction_index])
    target = orientation_code(axis_aligned_directions()[target_index])
    out = reorient(image, target)
    assert orientation_code(out.direction) == target
    assert_same_physical_image(image, out)


def test_orientation_codes_follow_itk():
    assert orientation_code(np.eye(3)) == "LPS"
    assert orientation_code(np.diag([-1.0, -1.0, 1.0])) == "RAS"
    assert orientation_code(make_image("axis_permuted").direction) == "PSL"


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(array=np.zeros((4, 4))), "3D array"),
        (dict(array=np.zeros((2, 3, 4, 5))), "3D array"),
        (dict(array=np.array([[[0.0, np.nan]]])), "NaN"),
        (dict(array=np.zeros((2, 2, 2)), spacing=(1, 0, 1)), "spacing must be positive"),
        (dict(array=np.zeros((2, 2, 2)), spacing=(1, -2, 1)), "spacing must be positive"),
        (dict(array=np.zeros((2, 2, 2)), spacing=(1, float("nan"), 1)), "NaN"),
        (dict(array=np.zeros((2, 2, 2)), direction=[[1, 0, 0], [0, 1, 0], [0, 0.2, 1]]), "not orthonormal"),
        (dict(array=np.zeros((2, 2, 2)), direction=np.eye(3) * 2), "not orthonormal"),
        (dict(array=np.zeros((2, 2, 2), dtype=complex)), "unsupported voxel type"),
    ],
)
def test_bad_input_is_refused_with_the_problem_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Image(**kwargs)


def test_labelmap_on_another_grid_is_refused():
    reference = make_image("anisotropic")
    shifted = Image(np.zeros(reference.array.shape, np.uint8), reference.spacing, reference.origin + 0.5, np.eye(3))
    with pytest.raises(ValueError, match="origin.*resample"):
        require_same_grid(shifted, reference)
    smaller = Image(np.zeros((7, 9, 8), np.uint8), reference.spacing, reference.origin)
    with pytest.raises(ValueError, match="size"):
        require_same_grid(smaller, reference)
    require_same_grid(reference.with_array(np.zeros(reference.array.shape, np.uint8)), reference)


def test_unknown_file_type_names_the_accepted_ones(tmp_path):
    with pytest.raises(ValueError, match=r"\.nii\.gz"):
        write_image(make_image("identity"), tmp_path / "volume.png")
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "missing.nii.gz")


def test_failed_write_leaves_the_old_file_untouched(tmp_path):
    path = write_image(make_image("identity"), tmp_path / "keep.nrrd")
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(path) as tmp:
        tmp.write_bytes(before[: len(before) // 2])  # half a file, then the writer dies
        raise RuntimeError("disk full")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.nrrd"]
    assert_same_physical_image(make_image("identity"), read_image(path))


def test_saved_files_get_ordinary_permissions(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        path = write_image(make_image("identity"), tmp_path / "shared.nii.gz")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
