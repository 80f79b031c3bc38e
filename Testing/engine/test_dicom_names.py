"""Any segment name a user types gives valid DICOM: dciodvfy judges every RTSTRUCT and SEG, whatever the names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.plastimatch import dciodvfy, plastimatch_masks

from lesionseg.dicom import write_ct_series
from lesionseg.dicom.names import UTF8, fit_names
from lesionseg.dicomseg import export_dicomseg
from lesionseg.image import Image
from lesionseg.io import write_image
from lesionseg.rtstruct import export_rtstruct

TRICKY = [
    "Bone metastasis of the pelvis",
    "Bone metastasis of the spine",
    "Läsion\\Leber",  # a backslash: the DICOM value delimiter
    "脾臓の病変、左側",  # 8 CJK characters: 24 UTF-8 bytes, over SH's 16
    "👨‍👩‍👧‍👦 tumour",
    "tab\there\nnewline\x00nul\x1b",
    "x" * 300,
    "   ",
]


def _grid(count: int) -> tuple[Image, Image]:
    """A small CT and a label map with ``count`` labels, one small square each."""
    image = Image(np.zeros((2, 4 * count + 2, 8), np.int16), (1.0, 1.0, 2.0), origin=(-4.0, -4.0, 0.0))
    labels = np.zeros(image.array.shape, np.uint8)
    for value in range(1, count + 1):
        labels[value % 2, 4 * value - 2 : 4 * value, 2:5] = value
    return image, image.with_array(labels)


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory) -> tuple[Path, Image, Image]:
    folder = tmp_path_factory.mktemp("names") / "ct"
    image, labels = _grid(len(TRICKY))
    write_ct_series(image, folder, uid_seed="names")
    return folder, image, labels


def _encoded(value: str, dataset: pydicom.Dataset) -> int:
    return len(value.encode("utf-8" if dataset.SpecificCharacterSet == UTF8 else "ascii"))


def _export_both(ct: Path, labels: Image, names: dict[int, str], out: Path) -> tuple[Path, Path, list[str]]:
    said: list[str] = []
    rtstruct = export_rtstruct(ct, labels, out / "rtstruct.dcm", names=names, say=said.append)
    seg = export_dicomseg(ct, labels, out / "seg.dcm", names=names, say=said.append)
    return rtstruct, seg, said


def _assert_clean(rtstruct: Path, seg: Path, count: int) -> None:
    for path in (rtstruct, seg):
        status, errors = dciodvfy(path)
        assert status == 0 and not errors, (path.name, errors)
    structure_set = pydicom.dcmread(rtstruct)
    roi_names = [item.ROIName for item in structure_set.StructureSetROISequence]
    roi_labels = [item.ROIObservationLabel for item in structure_set.RTROIObservationsSequence]
    segment_labels = [item.SegmentLabel for item in pydicom.dcmread(seg).SegmentSequence]
    for values, limit in ((roi_names, 64), (roi_labels, 16), (segment_labels, 64)):
        assert len(values) == count and all(isinstance(v, str) for v in values)  # one value each, not several
        assert len({v.casefold() for v in values}) == count  # still tells the structures apart
        assert all(0 < _encoded(v, structure_set) <= limit for v in values)


def test_export_with_non_ascii_backslash_and_long_names_is_dciodvfy_clean_and_says_what_changed(ct_series, tmp_path):
    ct, _image, labels = ct_series
    names = dict(enumerate(TRICKY, start=1))
    rtstruct, seg, said = _export_both(ct, labels, names, tmp_path)
    _assert_clean(rtstruct, seg, len(TRICKY))
    structure_set = pydicom.dcmread(rtstruct)
    assert structure_set.SpecificCharacterSet == UTF8
    labels_written = [item.ROIObservationLabel for item in structure_set.RTROIObservationsSequence]
    assert labels_written[3] == "脾臓の病変"  # five whole characters, 15 bytes: no character cut in half
    assert labels_written[:2] == ["Bone metastasis", "Bone metastasi 2"]
    assert structure_set.StructureSetROISequence[2].ROIName == "Läsion-Leber"
    assert any("'x" in line and "64 bytes" in line for line in said)  # the long name is not cut silently
    assert any("Bone metastasis of the spine" in line and "numbered 2" in line for line in said)


def test_a_latin1_series_with_a_cjk_name_switches_to_utf8_and_keeps_the_patient_name(tmp_path):
    image, labels = _grid(1)
    write_ct_series(image, tmp_path / "ct", uid_seed="latin1")
    for path in sorted((tmp_path / "ct").iterdir()):
        dataset = pydicom.dcmread(path)
        dataset.SpecificCharacterSet = "ISO_IR 100"
        dataset.PatientName = "Müller^Jürgen"
        dataset.save_as(path)
    rtstruct, seg, _said = _export_both(tmp_path / "ct", labels, {1: "脾臓の病変、左側"}, tmp_path)
    _assert_clean(rtstruct, seg, 1)
    for path in (rtstruct, seg):
        written = pydicom.dcmread(path)
        assert written.SpecificCharacterSet == UTF8 and str(written.PatientName) == "Müller^Jürgen"


def test_fit_names_cuts_within_bytes_on_character_boundaries_and_numbers_repeats():
    fitted = fit_names(["éééééééééé", "ééééééééé", "a\\b", "\x00"], "SH", UTF8)
    assert fitted.names == ["éééééééé", "ééééééé 2", "a-b", "Segment"]
    assert all(len(name.encode()) <= 16 for name in fitted.names)
    assert len(fitted.notes) == 4
    assert fit_names(["Spleen", "Liver"], "SH", "ISO_IR 100").notes == []


def test_rtstruct_command_prints_a_note_for_each_shortened_name(ct_series, tmp_path):
    ct, _image, labels = ct_series
    write_image(labels, tmp_path / "labels.nii.gz")
    done = subprocess.run(
        [sys.executable, "-m", "lesionseg", "rtstruct", "--reference", str(ct),
         "--seg", str(tmp_path / "labels.nii.gz"), "--output", str(tmp_path / "rt.dcm"),
         "--names", "1=Bone metastasis of the pelvis,2=脾臓\\病変"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Bone metastasis of the pelvis" in done.stdout and "16 bytes" in done.stdout
    assert "'脾臓-病変'" in done.stdout
    assert dciodvfy(tmp_path / "rt.dcm") == (0, [])


def test_plastimatch_reads_an_rtstruct_with_unicode_names(ct_series, tmp_path):
    ct, image, labels = ct_series
    names = {1: "脾臓の病変、左側", 2: "Läsion\\Leber", 3: "👨‍👩‍👧‍👦 tumour"}
    subset = labels.with_array(np.where(labels.array <= 3, labels.array, 0).astype(np.uint8))
    rtstruct = export_rtstruct(ct, subset, tmp_path / "rt.dcm", names=names, say=lambda _m: None)
    masks = plastimatch_masks(rtstruct, ct, tmp_path / "masks")
    assert len(masks) == 3
    voxels = sorted(int((mask.array > 0).sum()) for mask in masks.values())
    assert voxels == sorted(int((subset.array == v).sum()) for v in names)


NAME_TEXT = st.one_of(
    st.text(min_size=1, max_size=90),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=10, max_size=200),
    st.sampled_from(TRICKY),
)


def _check_names(ct_series, tmp_path_factory, names: list[str]) -> None:
    ct, _image, labels = ct_series
    subset = labels.with_array(np.where(labels.array <= len(names), labels.array, 0).astype(np.uint8))
    out = tmp_path_factory.mktemp("example")
    rtstruct, seg, _said = _export_both(ct, subset, dict(enumerate(names, start=1)), out)
    _assert_clean(rtstruct, seg, len(names))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(NAME_TEXT, min_size=1, max_size=4))
def test_any_unicode_names_give_dciodvfy_clean_rtstruct_and_seg(ct_series, tmp_path_factory, names):
    _check_names(ct_series, tmp_path_factory, names)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(NAME_TEXT, min_size=1, max_size=len(TRICKY)))
def test_many_unicode_names_give_dciodvfy_clean_rtstruct_and_seg(ct_series, tmp_path_factory, names):
    _check_names(ct_series, tmp_path_factory, names)
