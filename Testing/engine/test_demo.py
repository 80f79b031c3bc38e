"""The README's main job: `lesionseg demo`, run as a real process, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from lesionseg.io import read_image
from lesionseg.models.registry import ModelRegistry


def test_demo_models_ship_as_verified_registry_models():
    entries = {entry.spec.id: entry for entry in ModelRegistry().entries()}
    for model_id in ("demo-spleen", "demo-lesion"):
        entry = entries[model_id]
        assert entry.weights_present and entry.verified is True, entry
        card = (entry.spec.folder / "model-card.md").read_text(encoding="utf-8").lower()
        assert "synthetic" in card and "not for clinical use" in card


@pytest.mark.slow
def test_demo_runs_from_dicom_to_a_report_with_a_valid_rtstruct(tmp_path):
    output = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "lesionseg", "demo", "--output", str(output), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Report:" in done.stdout and "report.html" in done.stdout
    summary = json.loads((output / "demo.json").read_text())
    report = output / "report"
    for name in ("report.md", "report.html", "metrics.json", "lesions.csv", "demo_coronal.png"):
        assert (report / name).is_file(), name
    assert list(report.glob("demo_axial_*.png"))
    validation = summary["rtstruct_validation"]
    assert validation["ran"] and validation["errors"] == 0, validation
    metrics = json.loads((report / "metrics.json").read_text())
    # The demo model was trained on phantoms; it must find the spleen of an unseen phantom.
    assert metrics["labels"]["1"]["dice"] >= 0.7, metrics["labels"]["1"]
    # the prediction lies on the grid of the DICOM series it was made from
    prediction = read_image(output / "prediction.seg.nrrd")
    assert prediction.same_grid(read_image(output / "study" / "dicom"))
    text = (report / "report.md").read_text()
    assert "SYNTHETIC" in text
    # Detection by size, as `lesionseg evaluate --min-reference-mm 10` counts it, and each phantom lesion listed
    # with its kind and whether the model found it.
    detection = metrics["detection"]
    assert detection["min_reference_mm"] == 10.0 and detection["n_ref"] >= 1
    assert f"Found {detection['tp']} of the phantom's {detection['n_ref']} lesions of 10 mm or more" in text
    listed = [line for line in text.splitlines() if line.startswith("| ") and ("| yes |" in line or "| no |" in line)]
    assert len(listed) == len(detection["reference_lesions"])
    assert all(any(kind in line for kind in ("sclerotic", "lytic", "node")) for line in listed)


@pytest.mark.slow
def test_demo_runs_with_the_pydicom_that_slicer_5_10_bundles(tmp_path):
    """Slicer 5.10 ships pydicom 2.4.4 (3.0 came with 5.12): writing the CT series, reading it back and writing
    the RTSTRUCT must work with it, and pydicom 3 must read what it wrote."""
    bundled = Path(sys.prefix) / "slicer-5.10"
    if not (bundled / "pydicom").is_dir():
        pytest.fail(f"{bundled} is missing; run `make setup`, which installs requirements/slicer-5.10.txt there")
    env = {**os.environ, "PYTHONPATH": str(bundled)}
    probe = [sys.executable, "-c", "import pydicom; print(pydicom.__version__)"]
    assert subprocess.run(probe, env=env, capture_output=True, text=True, check=True).stdout.strip() == "2.4.4"
    output = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "lesionseg", "demo", "--output", str(output), "--device", "cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    validation = json.loads((output / "demo.json").read_text())["rtstruct_validation"]
    assert validation["ran"] and validation["errors"] == 0, validation
    assert json.loads((output / "report" / "metrics.json").read_text())["labels"]["1"]["dice"] >= 0.7
    rtstruct = pydicom.dcmread(output / "RS_demo.dcm")
    assert rtstruct.Modality == "RTSTRUCT"
    assert rtstruct.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    slices = sorted((output / "study" / "dicom").iterdir())
    assert slices and all(path.read_bytes()[128:132] == b"DICM" for path in slices)
    assert pydicom.dcmread(slices[0]).Modality == "CT"
