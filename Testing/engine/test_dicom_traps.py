"""Every DICOM trap of NOTES.md §5, set on a generated series: the reader must see it and say so."""

from __future__ import annotations

import math
import os
import random
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames
from support.dicom_series import (
    COMPRESSED_SYNTAXES,
    compress_files,
    edit_files,
    linear_phantom,
    set_position,
    stored,
    write_phantom,
)
from support.geometries import assert_same_physical_image, make_image

from lesionseg.dicom import read_dicom_series, read_dicom_volume, scan_folder, write_ct_series
from lesionseg.dicom.write import ds
from lesionseg.image import Image


def test_each_slice_is_rescaled_with_its_own_slope_and_intercept(tmp_path):
    paths = write_phantom(tmp_path)
    slopes = [1.0, 2.0, 0.5, 1.0, 4.0, 0.25]
    intercepts = [-1024.0, -1000.0, -1024.0, 10.0, -2048.0, -1024.0]
    expected = []

    def vary(index, dataset):
        dataset.RescaleSlope = ds(slopes[index])
        dataset.RescaleIntercept = ds(intercepts[index])
        expected.append(stored(dataset) * slopes[index] + intercepts[index])

    edit_files(paths, vary)
    volume = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(volume.image.array, np.stack(expected).astype(np.float32))
    assert any("vary between slices" in w for w in volume.warnings)


def test_localizer_sharing_the_series_uid_and_size_is_left_out(tmp_path):
    image = linear_phantom()
    paths = write_phantom(tmp_path / "ct", image, uid_seed="loc")
    reference = pydicom.dcmread(paths[-1])
    # A localizer with the same UID, rows and columns, placed where one more slice would go.
    reference.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    reference.SOPInstanceUID = pydicom.uid.generate_uid()
    reference.InstanceNumber = 99
    set_position(reference, image.world([0, 0, image.size[2]]))
    reference.save_as(tmp_path / "ct" / "LOCALIZER.dcm", enforce_file_format=True)
    volume = read_dicom_series(tmp_path / "ct")
    assert_same_physical_image(image, volume.image)
    assert volume.image.size == image.size
    assert any("localizer" in w for w in volume.warnings)
    assert [p.name for p, _ in volume.series.excluded] == ["LOCALIZER.dcm"]


def test_derived_images_beside_original_ones_are_left_out(tmp_path):
    image = linear_phantom()
    write_phantom(tmp_path, image, series_uid="1.2.826.0.1.3680043.8.498.77")
    derived = Image(np.zeros((2, 10, 12), np.int16), image.spacing, image.world([0, 0, 1]), image.direction)
    write_ct_series(
        derived,
        tmp_path,
        series_uid="1.2.826.0.1.3680043.8.498.77",
        file_prefix="MIP",
        extra={"ImageType": ["DERIVED", "SECONDARY", "AXIAL"]},
    )
    volume = read_dicom_series(tmp_path)
    assert_same_physical_image(image, volume.image)
    assert any("derived" in w for w in volume.warnings)


def test_non_uniform_spacing_is_resampled_with_a_warning_or_refused(tmp_path):
    image = linear_phantom(shape_kji=(5, 10, 12), spacing=(0.8, 0.9, 2.0))
    paths = write_phantom(tmp_path, image)
    heights = [0.0, 2.0, 4.0, 7.0, 10.0]  # 2 mm, then 3 mm apart
    edit_files(paths, lambda n, d: set_position(d, image.origin + image.direction[:, 2] * heights[n]))
    volume = read_dicom_series(tmp_path)
    out = volume.image
    assert any("non-uniform slice spacing" in w and "resampled" in w for w in volume.warnings)
    assert out.size == (12, 10, 6) and out.spacing[2] == pytest.approx(2.0)
    # The phantom is linear along the slices (100 per acquired slice), so interpolation is exact.
    acquired_k = np.interp(np.arange(6) * 2.0, heights, np.arange(5))
    expected = (100 * acquired_k)[:, None, None] + image.array[0].astype(np.float64)
    np.testing.assert_allclose(out.array, expected, atol=1e-3)
    with pytest.raises(ValueError, match="irregular slice positions"):
        read_dicom_volume(tmp_path, irregular="error")


def test_missing_slice_is_detected_and_filled_by_interpolation(tmp_path):
    image = linear_phantom(shape_kji=(7, 10, 12))
    paths = write_phantom(tmp_path, image)
    paths[3].unlink()
    volume = read_dicom_series(tmp_path)
    assert any("1 slice(s) missing" in w for w in volume.warnings), volume.warnings
    # Linear phantom: the rebuilt slice equals the one that was lost.
    assert_same_physical_image(image, volume.image)
    with pytest.raises(ValueError, match="missing"):
        read_dicom_volume(tmp_path, irregular="error")


def test_gantry_tilt_is_corrected_onto_an_orthogonal_grid_or_refused(tmp_path):
    nk, nj, ni = 5, 10, 12
    spacing = np.array([0.8, 0.9, 2.0])
    k, j, i = np.indices((nk, nj + nk, ni))
    truth = (50 * k + 7 * j + i).astype(np.int16)
    # Slice k of a tilted acquisition lies k rows further along j: it samples truth rows k .. k+nj-1.
    acquired = np.stack([truth[n, n : n + nj] for n in range(nk)])
    paths = write_ct_series(Image(acquired, spacing), tmp_path)
    tilt = math.degrees(math.atan2(spacing[1], spacing[2]))
    edit_files(
        paths,
        lambda n, d: (
            set_position(d, [0.0, n * spacing[1], n * spacing[2]]),
            setattr(d, "GantryDetectorTilt", ds(tilt)),
        ),
    )
    volume = read_dicom_series(tmp_path)
    out = volume.image
    assert any(f"gantry tilt of {tilt:.2f}" in w for w in volume.warnings), volume.warnings
    np.testing.assert_allclose(out.direction, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(out.spacing, spacing)
    for n in range(nk):
        # Rows the tilted slice covered are exact; rows it never saw are filled, not invented.
        np.testing.assert_allclose(out.array[n, n:], truth[n, n:nj], atol=1e-3)
    with pytest.raises(ValueError, match="gantry tilt"):
        read_dicom_volume(tmp_path, tilt="error")


def test_mixed_orientations_in_one_series_are_split_and_named(tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.1234"
    axial = linear_phantom()
    coronal = make_image("lps_flipped")
    coronal.direction = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])
    write_ct_series(axial, tmp_path, series_uid=uid, file_prefix="AX")
    write_ct_series(coronal, tmp_path, series_uid=uid, file_prefix="COR")
    scan = scan_folder(tmp_path)
    assert sorted(s.key for s in scan.series) == [f"{uid}#1", f"{uid}#2"]
    with pytest.raises(ValueError, match="2 image series.*--series") as error:
        read_dicom_volume(tmp_path)
    assert f"{uid}#1" in str(error.value) and f"{uid}#2" in str(error.value)
    with pytest.raises(ValueError, match="2 image series"):
        read_dicom_volume(tmp_path, series_uid=uid)
    parts = [read_dicom_volume(tmp_path, series_uid=f"{uid}#{n}") for n in (1, 2)]
    read_axial = [p for p in parts if abs(p.direction[2, 2]) > 0.5]
    read_coronal = [p for p in parts if abs(p.direction[1, 2]) > 0.5]
    assert len(read_axial) == len(read_coronal) == 1
    assert_same_physical_image(axial, read_axial[0])
    assert_same_physical_image(coronal, read_coronal[0])


def test_file_order_and_instance_numbers_do_not_decide_slice_order(tmp_path):
    image = make_image("lps_flipped")
    paths = write_ct_series(image, tmp_path, reverse_file_order=True)
    # Instance numbers that disagree with the positions as well.
    edit_files(paths, lambda n, d: setattr(d, "InstanceNumber", (n * 5) % len(paths) + 1))
    assert_same_physical_image(image, read_dicom_volume(tmp_path))


def test_shuffled_file_names_read_the_same(tmp_path):
    image = make_image("oblique_30_30")
    paths = write_ct_series(image, tmp_path)
    names = [f"{random.Random(7).getrandbits(64):x}{n}" for n in range(len(paths))]
    random.Random(3).shuffle(names)
    for path, name in zip(paths, names, strict=True):
        os.rename(path, tmp_path / name)
    assert_same_physical_image(image, read_dicom_volume(tmp_path))


def test_appledouble_files_and_junk_are_skipped(tmp_path):
    image = linear_phantom()
    paths = write_phantom(tmp_path / "a" / "b", image)
    # A ._ twin holding real DICOM content: it must be skipped by name, or it would repeat a slice.
    twin = pydicom.dcmread(paths[0])
    twin.SOPInstanceUID = pydicom.uid.generate_uid()
    twin.save_as(tmp_path / "a" / "b" / f"._{paths[0].name}", enforce_file_format=True)
    (tmp_path / "a" / "notes.txt").write_text("not an image\n")
    (tmp_path / "a" / "b" / "random.bin").write_bytes(np.random.default_rng(1).bytes(4096))
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + bytes(100))
    (tmp_path / "empty").write_bytes(b"")
    scan = scan_folder(tmp_path)
    assert len(scan.series) == 1 and not scan.unreadable
    assert {p.name for p in scan.skipped} == {"notes.txt", "random.bin", "empty", ".DS_Store", f"._{paths[0].name}"}
    assert_same_physical_image(image, read_dicom_volume(tmp_path))


@pytest.mark.parametrize("syntax", sorted(COMPRESSED_SYNTAXES))
def test_compressed_series_decode_to_the_same_hu(tmp_path, syntax):
    # Big enough for OpenJPEG's default number of wavelet resolutions.
    image = linear_phantom(shape_kji=(3, 40, 48), direction=np.diag([-1.0, -1.0, 1.0]))
    paths = write_ct_series(image, tmp_path)
    compress_files(paths, syntax)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == COMPRESSED_SYNTAXES[syntax]
    volume = read_dicom_series(tmp_path)
    assert_same_physical_image(image, volume.image)
    assert volume.series.first.transfer_syntax == COMPRESSED_SYNTAXES[syntax]


def test_truncated_pixel_data_is_an_error_naming_the_file(tmp_path):
    paths = write_phantom(tmp_path)
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) - 60])
    with pytest.raises(ValueError, match=f"{paths[2].name}.*truncated"):
        read_dicom_volume(tmp_path)


def test_pydicoms_truncated_mr_file_is_reported_not_skipped(tmp_path):
    source = get_testdata_file("MR_truncated.dcm", download=False)
    assert source, "pydicom's own test files are missing"
    shutil.copy(source, tmp_path / "MR_truncated.dcm")
    shutil.copy(get_testdata_file("CT_small.dcm", download=False), tmp_path / "CT_small.dcm")
    scan = scan_folder(tmp_path)
    assert [p.name for p, _ in scan.unreadable] == ["MR_truncated.dcm"]
    with pytest.raises(ValueError, match="MR_truncated.dcm"):
        read_dicom_volume(tmp_path)


def test_undecodable_compressed_frame_is_an_error_naming_the_file(tmp_path):
    image = linear_phantom(shape_kji=(3, 40, 48))
    paths = write_ct_series(image, tmp_path)
    compress_files(paths, "JPEG2000")
    broken = pydicom.dcmread(paths[1])
    frame = next(generate_frames(broken.PixelData, number_of_frames=1))
    broken.PixelData = encapsulate([frame[: len(frame) // 3]])
    broken.save_as(paths[1], enforce_file_format=True)
    with pytest.raises(ValueError, match=f"cannot decode the pixels of .*{paths[1].name}"):
        read_dicom_volume(tmp_path)


@pytest.mark.parametrize("keep_bytes", [300, 1000])
def test_truncated_header_is_an_error_naming_the_file(tmp_path, keep_bytes):
    paths = write_phantom(tmp_path)
    paths[4].write_bytes(paths[4].read_bytes()[:keep_bytes])
    scan = scan_folder(tmp_path)
    assert [p.name for p, _ in scan.unreadable] == [paths[4].name]
    assert "truncated" in scan.unreadable[0][1]
    with pytest.raises(ValueError, match=f"cannot be read.*{paths[4].name}"):
        read_dicom_volume(tmp_path)


def test_repeated_positions_split_by_acquisition(tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.55"
    first, second = linear_phantom(), linear_phantom()
    second.array = (second.array + 500).astype(np.int16)
    write_ct_series(first, tmp_path, series_uid=uid, file_prefix="A", extra={"AcquisitionNumber": 1})
    write_ct_series(second, tmp_path, series_uid=uid, file_prefix="B", extra={"AcquisitionNumber": 2})
    assert sorted(s.key for s in scan_folder(tmp_path).series) == [f"{uid}#1", f"{uid}#2"]
    values = sorted(float(read_dicom_volume(tmp_path, f"{uid}#{n}").array.min()) for n in (1, 2))
    assert values == [float(first.array.min()), float(second.array.min())]


def test_repeated_positions_that_nothing_separates_are_refused(tmp_path):
    image = linear_phantom()
    paths = write_phantom(tmp_path, image)
    shutil.copy(paths[1], tmp_path / "copy.dcm")
    edit_files([tmp_path / "copy.dcm"], lambda n, d: setattr(d, "SOPInstanceUID", pydicom.uid.generate_uid()))
    with pytest.raises(ValueError, match="share a position"):
        read_dicom_volume(tmp_path)


def test_a_wide_gap_splits_two_body_regions(tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.66"
    chest = linear_phantom(origin=(0.0, 0.0, 0.0))
    pelvis = linear_phantom(origin=(0.0, 0.0, -300.0))
    write_ct_series(chest, tmp_path, series_uid=uid, file_prefix="C")
    write_ct_series(pelvis, tmp_path, series_uid=uid, file_prefix="P")
    scan = scan_folder(tmp_path)
    assert len(scan.series) == 2
    images = [read_dicom_volume(tmp_path, s.key) for s in scan.series]
    origins = sorted(float(im.origin[2]) for im in images)
    assert origins == [-300.0, 0.0]


def test_folder_without_dicom_is_a_clear_error(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(ValueError, match="no DICOM image series"):
        read_dicom_volume(tmp_path)


def test_slices_without_position_are_refused_with_the_reason(tmp_path):
    paths = write_phantom(tmp_path)
    edit_files(paths, lambda n, d: delattr(d, "ImagePositionPatient"))
    with pytest.raises(ValueError, match="ImagePositionPatient is missing"):
        read_dicom_volume(tmp_path)


def test_non_image_objects_beside_the_series_are_listed_not_loaded(tmp_path):
    image = linear_phantom()
    write_phantom(tmp_path, image)
    shutil.copy(get_testdata_file("rtstruct.dcm", download=False), tmp_path / "rtstruct.dcm")
    scan = scan_folder(tmp_path)
    assert sorted(s.modality for s in scan.series) == ["CT", "RTSTRUCT"]
    assert [s.modality for s in scan.volumes()] == ["CT"]
    assert_same_physical_image(image, read_dicom_volume(tmp_path))
