"""``lesionseg synth``: what it writes, the DICOM it writes, and how it refuses bad requests."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from lesionseg.cli import main
from lesionseg.data.study import GENERATOR_VERSION, labels_document
from lesionseg.io import read_image
from lesionseg.orientation import orientation_code, reorient

SEED = 424242
CASE_FILES = ("image.nii.gz", "label.nii.gz", "labels.json", "truth.json")


def _synth(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lesionseg", "synth", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "cohort"
    done = _synth("--output", str(out), "--cases", "2", "--seed", str(SEED))
    assert done.returncode == 0, done.stderr
    assert "synthetic" in done.stdout
    return out


def test_synth_writes_the_documented_files(cohort):
    notice = (cohort / "SYNTHETIC.txt").read_text()
    assert "NOT PATIENT DATA" in notice and "NOT FOR CLINICAL USE" in notice
    listing = json.loads((cohort / "cohort.json").read_text())
    assert listing["seed"] == SEED and listing["generator_version"] == GENERATOR_VERSION
    assert listing["synthetic"] is True
    assert [row["case_id"] for row in listing["cases"]] == ["case001", "case002"]
    for row in listing["cases"]:
        folder = cohort / row["case_id"]
        for name in CASE_FILES:
            assert (folder / name).is_file(), f"{row['case_id']}/{name} missing"
        assert (cohort / row["image"]).is_file() and row["dicom"] is None
        assert json.loads((folder / "labels.json").read_text()) == labels_document()
        truth = json.loads((folder / "truth.json").read_text())
        assert truth["case_id"] == row["case_id"] and truth["synthetic"] is True
        assert len(truth["lesions"]) == row["lesions"]
        for lesion in truth["lesions"]:
            assert set(lesion) >= {"id", "kind", "centre_lps_mm", "diameter_mm", "volume_ml"}
        image, label = read_image(folder / "image.nii.gz"), read_image(folder / "label.nii.gz")
        assert image.array.dtype == np.int16 and label.array.dtype == np.uint8
        assert label.same_grid(image), "the label must lie on the image's grid"
        assert set(np.unique(label.array)) <= {0, *(row["value"] for row in labels_document()["labels"])}
        assert orientation_code(image.direction) == truth["orientation"]
        assert np.allclose(image.spacing, truth["spacing_mm"], atol=1e-4)


def test_a_case_is_the_same_whatever_the_cohort_it_is_made_in(cohort, tmp_path):
    alone = tmp_path / "alone"
    assert main(["synth", "--output", str(alone), "--cases", "1", "--first", "1", "--seed", str(SEED)]) == 0
    for name in ("image.nii.gz", "label.nii.gz"):
        a, b = read_image(cohort / "case002" / name), read_image(alone / "case002" / name)
        assert a.same_grid(b) and np.array_equal(a.array, b.array)
    truth_a = json.loads((cohort / "case002" / "truth.json").read_text())
    truth_b = json.loads((alone / "case002" / "truth.json").read_text())
    assert truth_a == truth_b


@pytest.mark.slow  # one DICOM file per slice, each saved atomically: about 5 s
def test_dicom_series_is_valid_and_reads_back_as_the_nifti(tmp_path):
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy (dicom3tools) is required for this test; install it (apt-get install dicom3tools)")
    out = tmp_path / "dicom_cohort"
    # feet-first storage: the series is written in reverse file order, so a reader must sort by position
    # case 10 of this seed has few (5 mm) slices, which keeps the one-file-per-slice write short
    args = ["--output", str(out), "--cases", "1", "--first", "9", "--seed", str(SEED), "--orientation", "LPI"]
    assert main(["synth", *args, "--dicom"]) == 0
    case = out / "case010"
    folder = case / "dicom"
    files = sorted(folder.glob("*.dcm"))
    for path in (files[0], files[len(files) // 2]):
        check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{path.name}: {errors}"
    truth = json.loads((case / "truth.json").read_text())
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert str(header.PatientName) == "Synthetic^Case010"
    assert header.StudyInstanceUID == truth["dicom"]["study_instance_uid"]
    assert header.SeriesInstanceUID == truth["dicom"]["series_instance_uid"]
    assert header.FrameOfReferenceUID == truth["dicom"]["frame_of_reference_uid"]
    assert "SYNTHETIC" in header.StudyDescription
    assert len(files) == truth["dicom"]["files"]

    from_dicom = read_image(folder)
    nifti = reorient(read_image(case / "image.nii.gz"), orientation_code(from_dicom.direction))
    assert from_dicom.same_grid(nifti), f"DICOM grid {from_dicom} vs NIfTI {nifti}"
    assert np.array_equal(from_dicom.array.astype(np.int16), nifti.array), "HU differ between DICOM and NIfTI"


def _refused(capsys, *args: str) -> str:
    assert main(["synth", *args]) == 2
    return capsys.readouterr().err


def test_bad_requests_are_refused_with_a_reason(tmp_path, capsys):
    assert "--cases must be 1 or more" in _refused(capsys, "-o", str(tmp_path / "a"), "--cases", "0")
    assert "--seed must be 0 or more" in _refused(capsys, "-o", str(tmp_path / "b"), "--seed", "-3")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert "is a file" in _refused(capsys, "-o", str(blocker / "cohort"))
    assert "is a file" in _refused(capsys, "-o", str(blocker))
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("someone's data")
    assert "not empty" in _refused(capsys, "-o", str(full))
    assert (full / "keep.txt").read_text() == "someone's data"
    if Path("/proc/self").is_dir():  # a folder no one may create in, even root
        assert "cannot write to" in _refused(capsys, "-o", "/proc/lesionseg-synth-test")
    assert "orientation code" in _refused(capsys, "-o", str(tmp_path / "c"), "--orientation", "XYZ")
    assert "lesion limit" in _refused(capsys, "-o", str(tmp_path / "d"), "--max-lesions", "-1")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
