"""Reading DICOM volumes: round trips through our writer, and a real scanner series against SimpleITK/GDCM."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from support.geometries import assert_same_physical_image, make_image
from support.reference_data import totalsegmentator_ct_dicom

from lesionseg.dicom import read_dicom_series, read_dicom_volume, write_ct_series
from lesionseg.io import read_image
from lesionseg.io.sitk import from_sitk

ROUND_TRIP_GEOMETRIES = [
    "identity",
    "lps_flipped",
    "oblique_30_30",
    "anisotropic",
    "non_square_512x384",
    "single_slice",
]


@pytest.mark.parametrize("name", ROUND_TRIP_GEOMETRIES)
def test_written_series_reads_back_as_the_same_physical_image(tmp_path, name):
    image = make_image(name)
    write_ct_series(image, tmp_path)
    volume = read_dicom_series(tmp_path)
    assert_same_physical_image(image, volume.image)
    assert volume.image.array.dtype == np.int16
    assert volume.warnings == []


def test_left_handed_grid_reads_back_with_slices_in_normal_order(tmp_path):
    # k runs against row x column: the reader orders slices along the normal, so k flips, voxels stay put.
    image = make_image("identity")
    image.direction = np.diag([1.0, 1.0, -1.0])
    write_ct_series(image, tmp_path)
    back = read_dicom_volume(tmp_path)
    assert_same_physical_image(image, back)
    np.testing.assert_allclose(back.direction, np.eye(3))


def test_read_image_accepts_a_dicom_folder(tmp_path):
    image = make_image("anisotropic")
    write_ct_series(image, tmp_path)
    assert_same_physical_image(image, read_image(tmp_path))


def sitk_series(folder) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@pytest.mark.slow  # decodes 20 JPEG 2000 slices of 512x512 twice: about 2-6 s on 2 cores
def test_real_jpeg2000_ct_matches_simpleitk_gdcm():
    folder = totalsegmentator_ct_dicom()
    volume = read_dicom_series(folder)
    reference = from_sitk(sitk_series(folder))
    image = volume.image
    assert image.size == reference.size == (512, 512, 20)
    np.testing.assert_allclose(image.spacing, reference.spacing, atol=1e-6)
    np.testing.assert_allclose(image.origin, reference.origin, atol=1e-6)
    np.testing.assert_allclose(image.direction, reference.direction, atol=1e-9)
    np.testing.assert_array_equal(image.array, reference.array)
    assert_same_physical_image(image, reference)
    # HU, not stored values: air near -1024 and bone well above 0.
    assert image.array.min() <= -1000 and image.array.max() > 1000
    assert volume.series.first.transfer_syntax == "1.2.840.10008.1.2.4.90"
    # The anonymised files carry an empty SeriesInstanceUID; that is the only remark expected.
    assert [w for w in volume.warnings if "SeriesInstanceUID" not in w] == []
