"""The README's main job: `lesionseg demo`, run as a real process, end to end."""

from __future__ import annotations

import json
import subprocess
import sys

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
    assert "SYNTHETIC" in (report / "report.md").read_text()
