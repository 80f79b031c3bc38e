"""The CT series writer: valid per dciodvfy, and read back the same by an independent reader."""

from __future__ import annotations

import subprocess

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from support.geometries import assert_same_physical_image, make_image, rotation

from lesionseg.dicom import write_ct_series
from lesionseg.image import Image
from lesionseg.io.sitk import from_sitk


def dciodvfy_errors(path) -> list[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    assert (result.returncode == 0) == (not errors), lines
    return errors


@pytest.mark.parametrize("name", ["identity", "oblique_30_30", "single_slice", "non_square_512x384"])
def test_written_ct_files_pass_dciodvfy(tmp_path, name):
    paths = write_ct_series(make_image(name), tmp_path, series_description="dciodvfy check")
    for path in (paths[0], paths[-1]):
        assert dciodvfy_errors(path) == [], path


def sitk_read(folder) -> Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return from_sitk(reader.Execute())


@pytest.mark.parametrize("name", ["lps_flipped", "oblique_30_30", "axis_permuted"])
def test_independent_reader_sees_the_written_geometry(tmp_path, name):
    image = make_image(name)
    write_ct_series(image, tmp_path, reverse_file_order=True)
    assert_same_physical_image(image, sitk_read(tmp_path))


def test_pixel_spacing_lists_row_spacing_first(tmp_path):
    # 0.6 mm along i (columns), 1.2 mm along j (rows): the swap rt-utils made would show here.
    image = Image(np.zeros((2, 3, 5), np.int16), spacing=(0.6, 1.2, 2.0))
    paths = write_ct_series(image, tmp_path)
    d = pydicom.dcmread(paths[0])
    assert (d.Rows, d.Columns) == (3, 5)
    assert [float(v) for v in d.PixelSpacing] == [1.2, 0.6]
    assert float(d.SliceThickness) == 2.0
    np.testing.assert_allclose(sitk_read(tmp_path).spacing, [0.6, 1.2, 2.0])


def test_hu_are_stored_losslessly_with_slope_and_intercept(tmp_path):
    values = np.array([-31744, -1024, 0, 1, 3071, 31743], dtype=np.int32).reshape(1, 2, 3)
    paths = write_ct_series(Image(values.astype(np.float64)), tmp_path)
    d = pydicom.dcmread(paths[0])
    assert d.PixelRepresentation == 1 and d.BitsStored == 16
    hu = d.pixel_array.astype(np.int64) * float(d.RescaleSlope) + float(d.RescaleIntercept)
    np.testing.assert_array_equal(hu, values[0])


def test_values_a_ct_series_cannot_hold_are_refused(tmp_path):
    with pytest.raises(ValueError, match="outside the range"):
        write_ct_series(Image(np.full((1, 2, 2), 40000.0)), tmp_path)
    with pytest.raises(ValueError, match="fractional"):
        write_ct_series(Image(np.full((1, 2, 2), 0.5)), tmp_path, allow_rounding=False)


def test_uids_are_unique_and_a_seed_makes_them_repeatable(tmp_path):
    image = make_image("identity")
    first = [pydicom.dcmread(p) for p in write_ct_series(image, tmp_path / "a", uid_seed="case-7")]
    again = [pydicom.dcmread(p) for p in write_ct_series(image, tmp_path / "b", uid_seed="case-7")]
    other = [pydicom.dcmread(p) for p in write_ct_series(image, tmp_path / "c")]
    sops = [d.SOPInstanceUID for d in first]
    assert len(set(sops)) == len(sops)
    assert sops == [d.SOPInstanceUID for d in again]
    assert first[0].SeriesInstanceUID == again[0].SeriesInstanceUID != other[0].SeriesInstanceUID
    assert not set(sops) & {d.SOPInstanceUID for d in other}
    assert all(len(uid) <= 64 for d in first for uid in (d.SOPInstanceUID, d.StudyInstanceUID, d.FrameOfReferenceUID))


def test_given_uids_and_extra_tags_are_written(tmp_path):
    paths = write_ct_series(
        make_image("single_slice"),
        tmp_path,
        study_uid="1.2.3.4",
        series_uid="1.2.3.4.5",
        frame_of_reference_uid="1.2.3.4.6",
        patient_id="P9",
        extra={"SeriesNumber": 7, "ConvolutionKernel": "B30f"},
    )
    d = pydicom.dcmread(paths[0])
    assert (d.StudyInstanceUID, d.SeriesInstanceUID, d.FrameOfReferenceUID) == ("1.2.3.4", "1.2.3.4.5", "1.2.3.4.6")
    assert (d.PatientID, d.SeriesNumber, d.ConvolutionKernel) == ("P9", 7, "B30f")
    assert d.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


def test_oblique_orientation_is_written_from_the_direction_columns(tmp_path):
    direction = rotation("x", 30) @ rotation("y", 30)
    image = Image(np.zeros((3, 4, 5), np.int16), spacing=(1, 1, 2), origin=(5, 6, 7), direction=direction)
    paths = write_ct_series(image, tmp_path)
    last = pydicom.dcmread(paths[-1])
    np.testing.assert_allclose([float(v) for v in last.ImageOrientationPatient], direction[:, :2].T.ravel(), atol=1e-12)
    np.testing.assert_allclose([float(v) for v in last.ImagePositionPatient], image.world([0, 0, 2]), atol=1e-9)
