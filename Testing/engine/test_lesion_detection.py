"""Detection by size and FROC points, on hand-built masks whose answers are known exactly."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support.metric_shapes import box

from lesionseg.cli import main
from lesionseg.image import Image
from lesionseg.io import write_image
from lesionseg.metrics import lesion_metrics
from lesionseg.metrics.detection import froc_points, lesion_detection, longest_extent_mm

SHAPE = (30, 40, 40)  # k, j, i
SPACING = (2.0, 2.0, 2.0)
VOXEL_MM3 = 8.0
BIG = box(SHAPE, (2, 2, 2), (6, 6, 6))  # a 12 mm cube: longest extent 12·√3 mm
SMALL = box(SHAPE, (20, 2, 2), (2, 2, 2))  # a 4 mm cube: 6.9 mm, under 10 mm
STRAY_SPECK = box(SHAPE, (30, 30, 20), (1, 1, 1))  # 8 mm³
STRAY_BLOB = box(SHAPE, (30, 20, 20), (3, 3, 3))  # 216 mm³


def _scene() -> tuple[np.ndarray, np.ndarray]:
    ref = BIG | SMALL
    pred = box(SHAPE, (7, 7, 7), (1, 1, 1)) | box(SHAPE, (21, 3, 3), (1, 1, 1)) | STRAY_SPECK | STRAY_BLOB
    return pred, ref


def test_longest_extent_is_measured_between_voxel_corners():
    line = np.array([[k, 0, 0] for k in range(5)])  # five voxels along k at 2 mm, 1 mm in-plane
    assert longest_extent_mm(line, np.array([1.0, 1.0, 2.0])) == pytest.approx(math.sqrt(1 + 1 + 10**2))
    assert longest_extent_mm(np.argwhere(BIG), np.array(SPACING)) == pytest.approx(12 * math.sqrt(3))


def test_a_lesion_touched_by_one_small_predicted_voxel_counts_as_found():
    pred, ref = _scene()
    found = lesion_detection(pred, ref, SPACING, min_reference_mm=10, min_prediction_mm3=50)
    assert (found["n_ref"], found["tp"], found["fn"], found["sensitivity"]) == (1, 1, 0, 1.0)
    assert found["n_ref_below_size"] == 1
    # The old single threshold drops the 8 mm³ hits from the prediction and so calls both lesions missed.
    old = lesion_metrics(pred, ref, np.array(SPACING), min_volume_mm3=50)
    assert (old["n_ref"], old["tp"], old["fn"]) == (2, 0, 2)


def test_a_stray_prediction_under_the_minimum_volume_is_no_false_positive():
    pred, ref = _scene()
    found = lesion_detection(pred, ref, SPACING, min_reference_mm=10, min_prediction_mm3=50)
    # The speck (8 mm³) is left out; the blob (216 mm³) is one false positive; the hit on the small
    # reference lesion is no false positive even though that lesion is not counted for sensitivity.
    assert (found["fp"], found["n_pred_small_unmatched"], found["n_pred"]) == (1, 1, 4)
    everything = lesion_detection(pred, ref, SPACING)
    assert (everything["n_ref"], everything["tp"], everything["fp"]) == (2, 2, 2)
    exactly = lesion_detection(pred, ref, SPACING, min_prediction_mm3=27 * VOXEL_MM3)
    assert exactly["fp"] == 1  # "at least" the minimum: the blob of exactly 216 mm³ counts


def test_no_reference_lesion_of_the_size_gives_no_sensitivity_rather_than_zero():
    pred, ref = _scene()
    found = lesion_detection(pred, ref, SPACING, min_reference_mm=25)
    assert (found["n_ref"], found["sensitivity"], found["n_ref_below_size"]) == (0, None, 2)


def _probabilities() -> list[tuple[np.ndarray, np.ndarray]]:
    """Two cases of (probability map, reference); answers per threshold worked out by hand below."""
    first_ref = BIG | box(SHAPE, (20, 20, 2), (6, 6, 6))
    first = np.zeros(SHAPE)
    first[BIG] = 0.8
    first[box(SHAPE, (20, 20, 2), (6, 6, 6))] = 0.4
    first[box(SHAPE, (30, 5, 20), (3, 3, 3))] = 0.6  # stray blob
    first[STRAY_BLOB] = 0.2  # another stray blob
    second_ref = box(SHAPE, (10, 25, 10), (6, 6, 6))
    second = np.zeros(SHAPE)
    second[second_ref] = 0.15
    return [(first, first_ref), (second, second_ref)]


def test_froc_points_fall_as_the_threshold_rises():
    cases = _probabilities()
    thresholds = (0.1, 0.3, 0.5, 0.7, 0.9)
    sets = {t: [(prob > t, ref, SPACING) for prob, ref in cases] for t in thresholds}
    points = froc_points(sets, min_reference_mm=10, min_prediction_mm3=50)
    assert [p["threshold"] for p in points] == list(thresholds)
    assert [(p["tp"], p["n_ref"], p["fp"]) for p in points] == [(3, 3, 2), (2, 3, 1), (1, 3, 1), (1, 3, 0), (0, 3, 0)]
    assert [p["fp_per_case"] for p in points] == [1.0, 0.5, 0.5, 0.0, 0.0]
    sens = [p["sensitivity"] for p in points]
    fps = [p["fp_per_case"] for p in points]
    assert sens == sorted(sens, reverse=True) and fps == sorted(fps, reverse=True)


def _write_cohort(folder: Path) -> None:
    for name, (prob, ref) in zip(("a", "b"), _probabilities(), strict=True):
        write_image(Image(ref.astype(np.uint8), spacing=SPACING), folder / "ref" / f"{name}.nii.gz")
        for threshold in (0.3, 0.5):
            pred = Image((prob > threshold).astype(np.uint8), spacing=SPACING)
            write_image(pred, folder / f"p{int(threshold * 100)}" / f"{name}.nii.gz")


def test_evaluate_cohort_reports_detection_by_size_and_a_froc_point_per_threshold(tmp_path):
    for sub in ("ref", "p30", "p50"):
        (tmp_path / sub).mkdir()
    _write_cohort(tmp_path)
    out = tmp_path / "metrics.json"
    command = [sys.executable, "-m", "lesionseg", "evaluate", "--pred", "p50", "--ref", "ref", "-o", str(out)]
    command += ["--min-reference-mm", "10", "--min-prediction-mm3", "50", "--froc", "0.5=p50", "--froc", "0.3=p30"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    pooled = result["summary"]["detection"]
    assert (pooled["n_ref"], pooled["tp"], pooled["fp"], pooled["fp_per_case"]) == (3, 1, 1, 0.5)
    assert [(p["threshold"], p["tp"], p["fp_per_case"]) for p in result["froc"]] == [(0.3, 2, 0.5), (0.5, 1, 0.5)]
    assert [case["detection"]["tp"] for case in result["cases"]] == [1, 0]
    # Lesion voxels: case a predicts 216 + 27 against 432 (216 shared), case b nothing against 216.
    assert pooled["dice_pooled"] == pytest.approx(2 * 216 / (243 + 432 + 216))
    assert pooled["dice_mean"] == pytest.approx((2 * 216 / (243 + 432) + 0.0) / 2)
    assert "detection (reference lesions >= 10 mm, FP >= 50 mm³): sensitivity 0.333 (1/3)" in done.stdout
    assert "FROC threshold 0.3: sensitivity 0.667 (2/3), FP 0.50 per case, lesion Dice" in done.stdout


def test_evaluate_csv_writes_the_froc_points_beside_the_metrics(tmp_path):
    for sub in ("ref", "p30", "p50"):
        (tmp_path / sub).mkdir()
    _write_cohort(tmp_path)
    out = tmp_path / "metrics.csv"
    args = ["evaluate", "--pred", str(tmp_path / "p50"), "--ref", str(tmp_path / "ref"), "-o", str(out)]
    assert main([*args, "--min-reference-mm", "10", "--froc", f"0.3={tmp_path / 'p30'}"]) == 0
    lines = (tmp_path / "metrics_detection.csv").read_text().splitlines()
    assert lines[0].startswith("threshold,n_cases,n_ref,tp,fn,fp,sensitivity,fp_per_case")
    assert lines[1].startswith("evaluated,2,3,1,2,1,") and lines[2].startswith("0.3,2,3,2,1,1,")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--froc", "half=p30"], "THRESHOLD=PATH"),
        (["--froc", "0.3=p30", "--froc", "0.3=p50"], "given twice"),
        (["--froc", "0.3=missing"], "is not a folder"),
        (["--min-reference-mm", "-1"], "--min-reference-mm must be 0 or more"),
        (["--min-prediction-mm3", "nan"], "--min-prediction-mm3 must be 0 or more"),
    ],
)
def test_evaluate_explains_bad_detection_options(tmp_path, capsys, monkeypatch, extra, message):
    for sub in ("ref", "p30", "p50"):
        (tmp_path / sub).mkdir()
    _write_cohort(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--pred", "p50", "--ref", "ref", "-o", "m.json", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()


def test_evaluate_one_case_gives_a_froc_point_per_prediction_file(tmp_path, capsys):
    prob, ref = _probabilities()[0]
    ref_path = write_image(Image(ref.astype(np.uint8), spacing=SPACING), tmp_path / "ref.nii.gz")
    paths = {}
    for threshold in (0.1, 0.7):
        pred = Image((prob > threshold).astype(np.uint8), spacing=SPACING)
        paths[threshold] = write_image(pred, tmp_path / f"p{int(threshold * 10)}.nii.gz")
    out = tmp_path / "m.json"
    args = ["evaluate", "--pred", str(paths[0.7]), "--ref", str(ref_path), "-o", str(out), "--min-reference-mm", "10"]
    froc = [f"--froc={t}={path}" for t, path in paths.items()]
    assert main([*args, "--min-prediction-mm3", "50", *froc]) == 0
    points = json.loads(out.read_text())["froc"]
    assert [(p["threshold"], p["tp"], p["n_ref"], p["fp"]) for p in points] == [(0.1, 2, 2, 2), (0.7, 1, 2, 0)]
    # One case takes one prediction file per threshold, not a folder.
    (tmp_path / "folder").mkdir()
    assert main([*args, "--overwrite", "--froc", f"0.5={tmp_path / 'folder'}"]) == 2
    assert "is not a file" in capsys.readouterr().err
