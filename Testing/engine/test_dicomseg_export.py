"""DICOM SEG export, read back frame by frame and placed in space from its own tags."""

from __future__ import annotations

import subprocess
import sys

import highdicom as hd
import numpy as np
import pydicom
import pytest
from support.geometries import rotation
from support.plastimatch import dciodvfy

from lesionseg.dicom import write_ct_series
from lesionseg.dicomseg import export_dicomseg, segment_codes
from lesionseg.image import Image
from lesionseg.io import write_image
from lesionseg.labels import LabelInfo

GEOMETRIES = {
    "identity": np.eye(3),
    # Negated row and column cosines: the case other tools' SEG output mirrors.
    "negated_rows_and_columns": np.diag([-1.0, -1.0, 1.0]),
    "flipped_row_direction": np.diag([-1.0, 1.0, -1.0]),
    "oblique": rotation("z", 25) @ rotation("x", 30),
}


def labelled_grid(direction: np.ndarray) -> Image:
    """48 x 40 x 12 voxels holding three labels placed asymmetrically, so any flip shows."""
    labels = np.zeros((12, 40, 48), np.uint8)
    labels[2:6, 3:12, 5:30] = 1
    labels[7:11, 25:37, 30:44] = 1
    labels[4:9, 20:24, 2:8] = 5  # value 5, so segment numbers and label values differ
    labels[10, 2:5, 40:46] = 7  # on one slice only
    return Image(labels, (0.6, 1.2, 2.5), (12.5, -80.25, 301.0), direction)


def read_frames(path):
    """Each frame's segment number, LPS position and pixels, taken straight from the SEG's tags."""
    ds = pydicom.dcmread(path)
    shared = ds.SharedFunctionalGroupsSequence[0]
    orientation = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    spacing = np.array(shared.PixelMeasuresSequence[0].PixelSpacing, float)
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    frames = []
    for n, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        segment = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        position = np.array(group.PlanePositionSequence[0].ImagePositionPatient, float)
        frames.append((segment, position, pixels[n]))
    return ds, orientation, spacing, frames


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_seg_frames_land_on_the_source_voxels(tmp_path, geometry):
    source = labelled_grid(GEOMETRIES[geometry])
    ct = tmp_path / "ct"
    write_ct_series(source.with_array(np.zeros(source.array.shape, np.int16)), ct, uid_seed=geometry)
    seg = export_dicomseg(ct, source, tmp_path / "seg.dcm", names={1: "Spleen", 5: "Liver", 7: "Lesion"})

    status, errors = dciodvfy(seg)
    assert status == 0 and errors == [], errors
    ds, orientation, spacing, frames = read_frames(seg)
    np.testing.assert_allclose(orientation, np.concatenate([source.direction[:, 0], source.direction[:, 1]]), atol=1e-6)
    np.testing.assert_allclose(spacing, [source.spacing[1], source.spacing[0]], atol=1e-6)  # rows first
    values = {1: 1, 2: 5, 3: 7}
    found = {value: np.zeros(source.array.shape, bool) for value in values.values()}
    rows, columns = np.mgrid[0 : ds.Rows, 0 : ds.Columns]
    for segment, position, pixels in frames:
        # Where each frame pixel is in space, from the frame's own position and the shared orientation.
        world = (
            position
            + np.multiply.outer(columns * spacing[1], orientation[:3])
            + np.multiply.outer(rows * spacing[0], orientation[3:])
        )
        ijk = source.index(world.reshape(-1, 3))
        np.testing.assert_allclose(ijk, np.round(ijk), atol=1e-3)
        i, j, k = np.round(ijk).astype(int).T
        assert len(set(k)) == 1, "a frame cuts across source slices"
        found[values[segment]][k, j, i] |= pixels.reshape(-1) > 0
    for value, mask in found.items():
        np.testing.assert_array_equal(mask, source.array == value, err_msg=f"label {value} moved or changed")

    # highdicom's own reader agrees on the segments' descriptions.
    reread = hd.seg.segread(seg)
    assert [reread.get_segment_description(n).segment_label for n in (1, 2, 3)] == ["Spleen", "Liver", "Lesion"]
    assert reread.get_segment_description(1).segmented_property_type.value == "78961009"  # SCT Spleen


@pytest.mark.slow
def test_cli_exports_names_from_labels_json_and_manual_algorithm(tmp_path):
    source = labelled_grid(np.eye(3))
    ct = tmp_path / "ct"
    write_ct_series(source.with_array(np.zeros(source.array.shape, np.int16)), ct)
    seg_path = write_image(source, tmp_path / "maps" / "case.nii.gz")
    (seg_path.parent / "case.labels.json").write_text(
        '[{"value": 1, "name": "spleen", "color": [0.8, 0.2, 0.1]}, {"value": 5, "name": "Unknown blob"}]'
    )
    out = tmp_path / "seg.dcm"
    command = [sys.executable, "-m", "lesionseg", "dicomseg", "--reference", str(ct), "--seg", str(seg_path)]
    done = subprocess.run([*command, "--output", str(out), "--algorithm", "manual"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ds = pydicom.dcmread(out)
    segments = ds.SegmentSequence
    assert [s.SegmentLabel for s in segments] == ["spleen", "Unknown blob", "Label_7"]
    assert {s.SegmentAlgorithmType for s in segments} == {"MANUAL"}
    assert segments[1].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Tissue"
    assert dciodvfy(out)[0] == 0


def test_segment_codes_prefer_terminology_then_snomed_name_then_tissue():
    terminology = {
        "category": {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"},
        "type": {"scheme": "SCT", "code": "78961009", "meaning": "Spleen"},
    }
    category, kind = segment_codes(LabelInfo(1, "whatever", terminology=terminology))
    assert (category.value, kind.value) == ("123037004", "78961009")
    category, kind = segment_codes(LabelInfo(1, "liver"))
    assert (category.meaning, kind.meaning) == ("Organ", "Liver")
    assert segment_codes(LabelInfo(2, "bone metastasis"))[1].meaning == "Lesion"
    assert segment_codes(LabelInfo(3, "Label_3"))[1].meaning == "Tissue"
