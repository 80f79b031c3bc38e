"""RTSTRUCT export judged by independent readers: dciodvfy for the IOD, plastimatch for the contours.

plastimatch rasterizes each structure back onto the CT series; its masks are compared with the
source label map in physical space.  The bar: Dice >= 0.97 for structures of 20 mm or more and
>= 0.90 for 5-20 mm.  Voxel-edge contours reach 1.0, which one test asserts.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from support.geometries import rotation
from support.plastimatch import dciodvfy, dice, fill_each_and_or, on_grid, plastimatch_masks

from lesionseg.dicom import write_ct_series
from lesionseg.image import Image
from lesionseg.io import write_image
from lesionseg.io.nrrd import write_nrrd
from lesionseg.rtstruct import export_rtstruct, read_reference_series
from lesionseg.rtstruct.build import MAX_CONTOUR_BYTES

# Grids of about 48 x 48 x 50 mm, so that one phantom (in mm) fits all of them.
GEOMETRIES = {
    "axial_square": dict(shape=(20, 64, 64), spacing=(0.75, 0.75, 2.5), direction=np.eye(3)),
    "non_square_anisotropic_0.6x1.2": dict(shape=(20, 40, 80), spacing=(0.6, 1.2, 2.5), direction=np.eye(3)),
    "reversed_slices": dict(shape=(20, 64, 64), spacing=(0.75, 0.75, 2.5), direction=np.diag([1.0, 1.0, -1.0])),
    "lps_flipped": dict(shape=(20, 64, 64), spacing=(0.75, 0.75, 2.5), direction=np.diag([-1.0, -1.0, 1.0])),
    "oblique_30x_20y": dict(
        shape=(20, 64, 64), spacing=(0.75, 0.75, 2.5), direction=rotation("x", 30) @ rotation("y", 20)
    ),
}
NAMES = {1: "Organ", 2: "Ring", 3: "Pair", 4: "Flat"}
LARGE = {"Organ", "Ring"}  # 20 mm or more; the others are 5-20 mm


def grid(name: str) -> Image:
    g = GEOMETRIES[name]
    return Image(np.zeros(g["shape"], np.int16), g["spacing"], origin=(-31.0, 17.5, -120.25), direction=g["direction"])


def phantom(image: Image) -> np.ndarray:
    """Organ (22 x 20 x 24 mm) with three cavities, a ring with an island in its hole, two 7 mm spheres,
    and a 6 mm square on one slice."""
    nk, nj, ni = image.array.shape
    k, j, i = np.mgrid[0:nk, 0:nj, 0:ni].astype(float)
    # mm from the grid centre along the grid's own axes, so the phantom turns with the grid
    x = (i - (ni - 1) / 2) * image.spacing[0]
    y = (j - (nj - 1) / 2) * image.spacing[1]
    z = (k - (nk - 1) / 2) * image.spacing[2]
    labels = np.zeros((nk, nj, ni), np.uint8)
    labels[((x + 12) / 11) ** 2 + ((y + 12) / 10) ** 2 + (z / 12) ** 2 <= 1] = 1
    for cx, cy in ((-17, -12), (-9, -16), (-8, -7)):  # cavities: several holes in one slice's piece
        labels[(x - cx) ** 2 + (y - cy) ** 2 + z**2 <= 2.5**2] = 0
    radius = np.hypot(x - 11, y - 11)
    labels[((radius <= 11) & (radius >= 5) | (radius <= 2)) & (np.abs(z) <= 7.5)] = 2  # an island in the hole
    for cx, cz in ((-16, 5), (-5, -5)):
        labels[(x - cx) ** 2 + (y - 14) ** 2 + (z - cz) ** 2 <= 3.5**2] = 3
    flat = (np.abs(x - 14) <= 3) & (np.abs(y + 14) <= 3) & (k == nk // 2)
    labels[flat] = 4
    return labels


def write_series(image: Image, folder: Path, reverse: bool = False) -> Path:
    write_ct_series(image, folder, uid_seed=folder.name, reverse_file_order=reverse)
    return folder


def round_trip(rtstruct: Path, ct: Path, work: Path, source: Image, names: dict[int, str]) -> dict[str, float]:
    masks = plastimatch_masks(rtstruct, ct, work)
    assert set(masks) == set(names.values())
    return {name: dice(on_grid(masks[name], source), source.array == value) for value, name in names.items()}


def contour_text(contour) -> str:
    element = contour[0x30060050]
    return element.value.decode() if isinstance(element.value, bytes) else "\\".join(map(str, element.value))


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_export_reads_back_in_plastimatch_and_passes_dciodvfy(tmp_path, geometry):
    image = grid(geometry)
    source = image.with_array(phantom(image))
    ct = write_series(image, tmp_path / "ct", reverse=geometry == "reversed_slices")
    rs = export_rtstruct(ct, source, tmp_path / "rs.dcm", names=NAMES)

    status, errors = dciodvfy(rs)
    assert status == 0 and errors == [], errors
    scores = round_trip(rs, ct, tmp_path / "pm", source, NAMES)
    for name, score in scores.items():
        assert score >= (0.97 if name in LARGE else 0.90), scores
    # Voxel-edge contours lose nothing: the round trip is exact.
    assert min(scores.values()) == 1.0, scores

    ds = pydicom.dcmread(rs)
    reference = read_reference_series(ct)
    referenced = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    series = referenced.RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == reference.first.SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in series.ContourImageSequence} == {
        s.sop_instance_uid for s in reference.slices
    }
    by_uid = {s.sop_instance_uid: s for s in reference.slices}
    for roi in ds.ROIContourSequence:
        for contour in roi.ContourSequence:
            points = np.array(contour_text(contour).split("\\"), float).reshape(-1, 3)
            assert contour.NumberOfContourPoints == len(points) >= 4
            image_slice = by_uid[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            # Each contour lies in the plane of the slice it references.
            np.testing.assert_allclose((points - image_slice.position) @ reference.normal, 0, atol=1e-4)
    assert ds.Modality == "RTSTRUCT" and ds.SeriesInstanceUID != reference.first.SeriesInstanceUID
    assert ds.PatientID == reference.first.PatientID and ds.StudyInstanceUID == reference.first.StudyInstanceUID
    assert [r.ROIName for r in ds.StructureSetROISequence] == list(NAMES.values())
    assert {o.RTROIInterpretedType for o in ds.RTROIObservationsSequence} == {"ORGAN"}
    assert {r.ROIGenerationAlgorithm for r in ds.StructureSetROISequence} == {"AUTOMATIC"}


def test_sagittal_series_contours_lie_on_voxel_edges_of_their_slices(tmp_path):
    """A sagittal series (slice planes at right angles to the axial plane).

    plastimatch 1.9.4 misfills contours in sagittal and coronal planes (it does fill oblique ones
    correctly, see above), so here the check is geometric: every contour point, taken back to the
    grid's index space, sits on a voxel corner of the slice it references, and the polygons give
    back the slice mask exactly.
    """
    sagittal = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    image = Image(np.zeros((20, 64, 64), np.int16), (0.75, 0.75, 2.5), (10.0, -20.0, 40.0), sagittal)
    source = image.with_array(phantom(image))
    ct = write_series(image, tmp_path / "ct")
    rs = export_rtstruct(ct, source, tmp_path / "rs.dcm", names=NAMES)
    assert dciodvfy(rs) == (0, [])
    reference = read_reference_series(ct)
    grid_image = reference.grid()
    on_reference = on_grid(source, grid_image)
    ds = pydicom.dcmread(rs)
    order = {s.sop_instance_uid: n for n, s in enumerate(reference.slices)}
    for value, roi in zip(NAMES, ds.ROIContourSequence, strict=True):
        per_slice: dict[int, list[np.ndarray]] = {}
        for contour in roi.ContourSequence:
            points = np.array(contour_text(contour).split("\\"), float).reshape(-1, 3)
            ijk = grid_image.index(points)
            k = order[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            np.testing.assert_allclose(ijk[:, 2], k, atol=1e-4)
            np.testing.assert_allclose(np.mod(ijk[:, :2], 1.0), 0.5, atol=1e-4)
            per_slice.setdefault(k, []).append(ijk[:, :2])
        for k in range(len(reference.slices)):
            expected = on_reference[k] == value
            rebuilt = fill_each_and_or(per_slice.get(k, []), expected.shape)
            np.testing.assert_array_equal(rebuilt, expected)


def test_huge_contour_is_split_below_the_explicit_vr_limit(tmp_path):
    """A 512 x 512 comb-edged square: one outline would need > 100 kB of ContourData."""
    image = Image(np.zeros((1, 512, 512), np.int16), (0.7777, 0.7777, 3.0), (-198.7654, -201.2345, -1234.5678))
    mask = np.zeros((512, 512), np.uint8)
    mask[8:504, 8:504] = 1
    mask[4:8, 8:504:2] = 1  # teeth on all four sides
    mask[504:508, 8:504:2] = 1
    mask[8:504:2, 4:8] = 1
    mask[8:504:2, 504:508] = 1
    source = image.with_array(mask[np.newaxis])
    ct = write_series(image, tmp_path / "ct")
    rs = export_rtstruct(ct, source, tmp_path / "rs.dcm", names={1: "Comb"})
    assert dciodvfy(rs) == (0, [])
    ds = pydicom.dcmread(rs)
    contours = ds.ROIContourSequence[0].ContourSequence
    texts = [contour_text(c) for c in contours]
    assert len(contours) > 1
    assert sum(len(t) for t in texts) > MAX_CONTOUR_BYTES  # one outline could not have held it
    assert all(len(t) <= MAX_CONTOUR_BYTES for t in texts)
    assert all(len(v) <= 16 for t in texts for v in t.split("\\"))
    scores = round_trip(rs, ct, tmp_path / "pm", source, {1: "Comb"})
    # plastimatch fills on its own 512 x 512 raster over the structure's extent and resamples that
    # to the CT, so across a 500-voxel structure a few 1-voxel teeth alias (Dice 0.9995 here).
    assert scores["Comb"] >= 0.99


@pytest.mark.slow
def test_cli_names_skips_empty_label_with_warning_and_sets_type_and_algorithm(tmp_path):
    image = grid("axial_square")
    source = image.with_array(phantom(image))
    ct = write_series(image, tmp_path / "ct")
    seg = write_image(source, tmp_path / "seg.nii.gz")
    rs = tmp_path / "out" / "rs.dcm"
    base = [sys.executable, "-m", "lesionseg", "rtstruct", "--reference", str(ct), "--seg", str(seg)]
    command = [*base, "--output", str(rs), "--names", "1=Spleen,2=Ring,9=Absent", "--type", "2=GTV"]
    done = subprocess.run([*command, "--algorithm", "manual"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "label 9 (Absent) is not in the label map" in done.stderr
    ds = pydicom.dcmread(rs)
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["Spleen", "Ring"]
    assert [o.RTROIInterpretedType for o in ds.RTROIObservationsSequence] == ["ORGAN", "GTV"]
    assert {r.ROIGenerationAlgorithm for r in ds.StructureSetROISequence} == {"MANUAL"}
    assert not [p for p in rs.parent.iterdir() if p.name != "rs.dcm"], "a temporary file was left behind"

    bad = [*base, "--output", str(rs), "--overwrite", "--type", "TUMOUR"]
    bad = subprocess.run(bad, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "RTROIInterpretedType 'TUMOUR' is unknown" in bad.stderr


def test_names_come_from_seg_nrrd_header_else_label_n(tmp_path):
    image = grid("axial_square")
    source = image.with_array(phantom(image))
    ct = write_series(image, tmp_path / "ct")
    header = {
        "Segment0_Name": "liver",
        "Segment0_LabelValue": "1",
        "Segment0_Color": "0.2 0.4 0.6",
        "Segment1_Name": "hollow",
        "Segment1_LabelValue": "2",
    }
    write_nrrd(source, tmp_path / "seg.seg.nrrd", extra_fields=header)
    rs = export_rtstruct(ct, tmp_path / "seg.seg.nrrd", tmp_path / "rs.dcm")
    ds = pydicom.dcmread(rs)
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["liver", "hollow", "Label_3", "Label_4"]
    assert list(ds.ROIContourSequence[0].ROIDisplayColor) == [51, 102, 153]

    nifti = write_image(source, tmp_path / "other" / "seg.nii.gz")
    (nifti.parent / "labels.json").write_text('{"1": "Spleen", "3": {"name": "Nodes", "color": [0, 255, 0]}}')
    ds = pydicom.dcmread(export_rtstruct(ct, nifti, tmp_path / "rs2.dcm"))
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["Spleen", "Label_2", "Nodes", "Label_4"]
    assert list(ds.ROIContourSequence[2].ROIDisplayColor) == [0, 255, 0]


def test_label_map_on_another_grid_is_resampled_with_a_note(tmp_path, capsys):
    image = grid("axial_square")
    source = image.with_array(phantom(image))
    ct = write_series(image, tmp_path / "ct")
    # The same voxels in another axis order: re-indexed silently and exactly.
    from lesionseg.orientation import reorient

    export_rtstruct(ct, reorient(source, "RAI"), tmp_path / "same.dcm", names={1: "Organ"})
    assert "resampled" not in capsys.readouterr().out
    # Half the resolution in-plane: resampled (nearest neighbour) with a note.
    coarse_array = source.array[:, ::2, ::2]
    coarse = Image(coarse_array, image.spacing * [2, 2, 1], image.world([0.5, 0.5, 0]), image.direction)
    rs = export_rtstruct(ct, coarse, tmp_path / "coarse.dcm", names={1: "Organ"})
    assert "resampled to it with nearest neighbour" in capsys.readouterr().out
    masks = plastimatch_masks(rs, ct, tmp_path / "pm")
    assert dice(on_grid(masks["Organ"], source), source.array == 1) >= 0.9


def test_smoothing_rounds_corners_and_stays_readable(tmp_path):
    image = grid("axial_square")
    cube = np.zeros(image.array.shape, np.uint8)
    cube[5:15, 16:48, 16:48] = 1
    source = image.with_array(cube)
    ct = write_series(image, tmp_path / "ct")
    rs = export_rtstruct(ct, source, tmp_path / "rs.dcm", names={1: "Cube"}, smooth_mm=3.0)
    assert dciodvfy(rs) == (0, [])
    smoothed = on_grid(plastimatch_masks(rs, ct, tmp_path / "pm")["Cube"], source) > 0
    assert not smoothed[5, 16, 16] and smoothed[10, 32, 32]  # a corner is cut, the middle stays
    assert 0.8 * cube.sum() < smoothed.sum() < cube.sum()
    assert not (smoothed & ~cube.astype(bool)).any()  # a convex shape only shrinks


def test_bad_inputs_are_refused_and_an_old_output_survives(tmp_path, caplog):
    image = grid("axial_square")
    source = image.with_array(phantom(image))
    ct = write_series(image, tmp_path / "ct")
    out = tmp_path / "rs.dcm"
    out.write_bytes(b"previous export")
    with pytest.raises(ValueError, match="nothing to export"):
        export_rtstruct(ct, source.with_array(np.zeros_like(source.array)), out)
    with pytest.raises(FileNotFoundError, match="no such reference series folder"):
        export_rtstruct(tmp_path / "rs.dcm", source, out)
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match="nothing to export"):
        export_rtstruct(ct, source, out, names={8: "Nothing"})
    assert "label 8 (Nothing) is not in the label map" in caplog.text
    assert out.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct", "rs.dcm"]


def test_series_with_a_missing_slice_is_sampled_slice_by_slice(tmp_path, capsys):
    image = grid("axial_square")
    source = image.with_array(phantom(image))
    paths = write_ct_series(image, tmp_path / "ct")
    paths[7].unlink()  # one gap twice as wide: the slices no longer form one grid
    rs = export_rtstruct(tmp_path / "ct", source, tmp_path / "rs.dcm", names=NAMES)
    assert "unevenly spaced" in capsys.readouterr().out
    assert dciodvfy(rs) == (0, [])
    masks = plastimatch_masks(rs, tmp_path / "ct", tmp_path / "pm")
    kept = [k for k in range(image.size[2]) if k != 7]
    for value, name in NAMES.items():
        assert dice(on_grid(masks[name], source)[kept], source.array[kept] == value) == 1.0, name


def test_real_series_without_uids_is_refused_with_the_reason(tmp_path):
    """The TotalSegmentator example CT (real scanner files, anonymized) has blank SOP and series UIDs."""
    from support.reference_data import totalsegmentator_ct_dicom

    series = totalsegmentator_ct_dicom()
    labels = Image(np.ones((20, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="has no SOPInstanceUID or SOPClassUID or SeriesInstanceUID"):
        export_rtstruct(series, labels, tmp_path / "rs.dcm")
    assert not list(tmp_path.iterdir())
