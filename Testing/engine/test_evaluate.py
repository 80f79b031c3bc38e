"""``lesionseg evaluate`` as a user runs it: files on disk in, JSON / CSV / report out."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from support.metric_shapes import ball, box, labelmap

from lesionseg.cli import main
from lesionseg.image import Image
from lesionseg.io import write_image

SHAPE = (24, 40, 40)
GRID = dict(spacing=(0.9, 0.9, 2.0), origin=(-30.0, 20.0, -50.0), direction=np.diag([-1.0, -1.0, 1.0]))


def _no_nan_json(path: Path) -> dict:
    def refuse(constant: str):
        raise AssertionError(f"{path.name} holds {constant}, which is not valid JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def _case(folder: Path, name: str, shift: int, ref_suffix=".nii.gz", pred_suffix=".nii.gz") -> tuple[Path, Path]:
    """An organ (1) and a lesion (2) in the reference; the prediction shifts the organ by ``shift`` voxels."""
    sp = GRID["spacing"]
    ref = labelmap([(ball(SHAPE, (20, 20, 12), 9, sp), 1), (box(SHAPE, (30, 8, 4), (3, 3, 2)), 2)], **GRID)
    pred = labelmap([(ball(SHAPE, (20 + shift, 20, 12), 9, sp), 1), (box(SHAPE, (31, 8, 4), (3, 3, 2)), 2)], **GRID)
    (folder / "ref").mkdir(parents=True, exist_ok=True)
    (folder / "pred").mkdir(parents=True, exist_ok=True)
    return (
        write_image(pred, folder / "pred" / f"{name}{pred_suffix}"),
        write_image(ref, folder / "ref" / f"{name}{ref_suffix}"),
    )


def _sitk_dice(pred: Path, ref: Path, label: int) -> float:
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(sitk.ReadImage(str(ref)), sitk.ReadImage(str(pred)))
    return overlap.GetDiceCoefficient(label)


def test_evaluate_writes_dice_per_label_to_json(tmp_path, capsys):
    pred, ref = _case(tmp_path, "case1", shift=2)
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--output", str(out), "--labels", "1=Spleen"]) == 0
    result = _no_nan_json(out)
    assert set(result["labels"]) == {"1", "2"}
    spleen = result["labels"]["1"]
    assert spleen["name"] == "Spleen" and result["labels"]["2"]["name"] == "Label_2"
    for key in ("dice", "iou", "hd95_mm", "assd_mm", "volume_pred_ml", "volume_ref_ml", "volume_diff_ml"):
        assert isinstance(spleen[key], float), key
    # Read back by SimpleITK's own reader and overlap filter: an independent path from file to Dice.
    assert spleen["dice"] == pytest.approx(_sitk_dice(pred, ref, 1), abs=1e-12)
    assert result["labels"]["2"]["dice"] == pytest.approx(_sitk_dice(pred, ref, 2), abs=1e-12)
    assert result["lesions"]["n_ref"] == 2 and result["lesions"]["tp"] == 2
    assert "surface" in result["definitions"]
    assert "Spleen: Dice" in capsys.readouterr().out


def test_evaluate_writes_one_csv_row_per_label_and_lesion_counts_beside_it(tmp_path):
    pred, ref = _case(tmp_path, "case1", shift=1)
    out = tmp_path / "metrics.csv"
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref), "-o", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [row["label"] for row in rows] == ["1", "2"]
    assert float(rows[0]["dice"]) == pytest.approx(_sitk_dice(pred, ref, 1), abs=1e-12)
    (lesions,) = csv.DictReader((tmp_path / "metrics_lesions.csv").open())
    assert (lesions["n_ref"], lesions["tp"], lesions["fp"]) == ("2", "2", "0")


def test_missed_lesion_reaches_the_json_as_false_negative_volume(tmp_path):
    sp = GRID["spacing"]
    organ = ball(SHAPE, (20, 20, 12), 9, sp)
    lesion = box(SHAPE, (30, 8, 4), (3, 3, 2))
    small = box(SHAPE, (4, 30, 20), (2, 2, 1))
    ref = write_image(labelmap([(organ, 1), (lesion, 2), (small, 2)], **GRID), tmp_path / "ref.nrrd")
    pred = write_image(labelmap([(organ, 1)], **GRID), tmp_path / "pred.nrrd")
    out = tmp_path / "m.json"
    args = ["evaluate", "--pred", str(pred), "--ref", str(ref), "-o", str(out), "--lesion-labels", "2"]
    assert main(args) == 0
    lesions = _no_nan_json(out)["lesions"]
    voxel_ml = 0.9 * 0.9 * 2.0 / 1000
    assert (lesions["n_ref"], lesions["fn"], lesions["lesion_labels"]) == (2, 2, [2])
    assert lesions["fn_volume_ml"] == pytest.approx((18 + 4) * voxel_ml, rel=1e-6)
    assert lesions["sensitivity"] == 0.0
    # The 4-voxel lesion (6.5 mm³) is under the minimum and no longer counts.
    assert main([*args, "--min-lesion-mm3", "10", "--connectivity", "6", "--overwrite"]) == 0
    lesions = _no_nan_json(out)["lesions"]
    assert (lesions["n_ref"], lesions["connectivity"], lesions["min_lesion_mm3"]) == (1, 6, 10.0)


def test_empty_prediction_writes_null_distances_not_nan(tmp_path):
    _, ref = _case(tmp_path, "case1", shift=0)
    empty = write_image(Image(np.zeros(SHAPE, dtype=np.uint8), **GRID), tmp_path / "empty.nii.gz")
    out = tmp_path / "m.json"
    assert main(["evaluate", "--pred", str(empty), "--ref", str(ref), "-o", str(out)]) == 0
    result = _no_nan_json(out)
    for row in result["labels"].values():
        assert row["empty"] == "prediction" and row["dice"] == 0.0 and row["hd95_mm"] is None
    assert result["lesions"]["fn"] == 2 and result["lesions"]["sensitivity"] == 0.0


def test_evaluate_refuses_a_prediction_on_another_grid_and_suggests_resampling(tmp_path, capsys):
    _, ref = _case(tmp_path, "case1", shift=0)
    other = write_image(Image(np.zeros(SHAPE, dtype=np.uint8), spacing=(1, 1, 1)), tmp_path / "other.nii.gz")
    assert main(["evaluate", "--pred", str(other), "--ref", str(ref), "-o", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err
    assert "grid" in err and "resample" in err
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--labels", "Spleen"], "1=Spleen"),
        (["--lesion-labels", "two"], "2,3"),
        (["--min-lesion-mm3", "-5"], "0 or more"),
        (["--image", "ct.nii.gz"], "--report"),
    ],
)
def test_evaluate_explains_bad_options(tmp_path, capsys, extra, message):
    pred, ref = _case(tmp_path, "case1", shift=0)
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref), "-o", str(tmp_path / "m.json"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_evaluate_cohort_folders_report_per_case_rows_and_mean_and_std(tmp_path):
    shifts = {"a": 0, "b": 2, "c": 4}
    for name, shift in shifts.items():
        # Case c's reference is NRRD: cases pair by name, whatever the format.
        _case(tmp_path, name, shift, ref_suffix=".nrrd" if name == "c" else ".nii.gz")
    out = tmp_path / "cohort.json"
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "-o", str(out)]) == 0
    result = _no_nan_json(out)
    assert [case["case"] for case in result["cases"]] == ["a", "b", "c"]
    dice = [case["labels"]["1"]["dice"] for case in result["cases"]]
    assert dice[0] == 1.0 and dice[0] > dice[1] > dice[2]
    summary = result["summary"]["labels"]["1"]["dice"]
    assert summary["mean"] == pytest.approx(np.mean(dice))
    assert summary["std"] == pytest.approx(np.std(dice, ddof=1))
    assert summary["n"] == 3
    assert result["summary"]["lesions"]["totals"]["n_ref"] == 6

    csv_out = tmp_path / "cohort.csv"
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "-o", str(csv_out)]) == 0
    rows = list(csv.DictReader(csv_out.open()))
    assert [(r["case"], r["label"]) for r in rows] == [
        ("a", "1"), ("a", "2"), ("b", "1"), ("b", "2"), ("c", "1"), ("c", "2"),
        ("mean", "1"), ("std", "1"), ("mean", "2"), ("std", "2"),
    ]  # fmt: skip
    assert float(rows[6]["dice"]) == pytest.approx(np.mean(dice))
    lesion_cases = [r["case"] for r in csv.DictReader((tmp_path / "cohort_lesions.csv").open())]
    assert lesion_cases == ["a", "b", "c", "total", "mean", "std"]


def test_evaluate_cohort_from_pairs_csv_with_paths_relative_to_it(tmp_path):
    _case(tmp_path, "x", 1)
    _case(tmp_path, "y", 3)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("case,pred,ref\nfirst,pred/x.nii.gz,ref/x.nii.gz\nsite 2/second,pred/y.nii.gz,ref/y.nii.gz\n")
    out = tmp_path / "out" / "cohort.json"
    report = tmp_path / "out" / "report"
    assert (
        main(["evaluate", "--pairs", str(pairs), "-o", str(out), "--report", str(report), "--report-slices", "1"]) == 0
    )
    result = _no_nan_json(out)
    assert [case["case"] for case in result["cases"]] == ["first", "site 2/second"]
    assert result["summary"]["n_cases"] == 2
    # A case name is not allowed to make folders or odd file names in the report.
    assert sorted(p.name.split("_axial_")[0] for p in report.glob("*.png")) == ["first", "site_2_second"]


def test_evaluate_cohort_refuses_a_reference_without_prediction(tmp_path, capsys):
    _case(tmp_path, "a", 0)
    _case(tmp_path, "b", 0)
    (tmp_path / "pred" / "b.nii.gz").unlink()
    out = tmp_path / "x.json"
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "1 reference case(s) have no prediction" in err and ": b;" in err
    assert not out.exists()


def test_report_shows_the_slices_that_disagree_most_over_the_ct(tmp_path):
    sp = GRID["spacing"]
    organ = ball(SHAPE, (20, 20, 12), 9, sp)
    pred_arr = organ.copy()
    pred_arr[14] = False  # the prediction misses all of slice 14 ...
    pred_arr[10, 15:25, 15:25] = False  # ... and a patch of slice 10
    ref = write_image(labelmap([(organ, 1)], **GRID), tmp_path / "ref.nii.gz")
    pred = write_image(labelmap([(pred_arr, 1)], **GRID), tmp_path / "case7.nii.gz")
    ct = np.where(organ, 60, -1000).astype(np.int16)
    ct_path = write_image(Image(ct, **GRID), tmp_path / "ct.nii.gz")
    report = tmp_path / "report"
    args = ["evaluate", "--pred", str(pred), "--ref", str(ref), "-o", str(tmp_path / "m.json")]
    assert main([*args, "--report", str(report), "--image", str(ct_path), "--report-slices", "2"]) == 0
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert pngs == ["case7_axial_010.png", "case7_axial_014.png"]
    from matplotlib.image import imread

    picture = imread(report / "case7_axial_014.png")
    assert picture.ndim == 3 and picture.shape[0] > 300 and picture.shape[1] > 300
    # The reference contour is drawn in label 1's colour.
    red = (np.abs(picture[..., 0] - 0.90) < 0.05) & (np.abs(picture[..., 1] - 0.32) < 0.05)
    assert np.count_nonzero(red) > 50
    markdown = (report / "report.md").read_text()
    assert "| 1 | Label_1 |" in markdown and "](case7_axial_014.png)" in markdown
    assert '<img src="case7_axial_010.png"' in (report / "report.html").read_text()


def test_cohort_report_draws_over_the_masks_without_an_image(tmp_path):
    _case(tmp_path, "a", 1)
    _case(tmp_path, "b", 3)
    report = tmp_path / "report"
    args = [
        "evaluate",
        "--pred",
        str(tmp_path / "pred"),
        "--ref",
        str(tmp_path / "ref"),
        "-o",
        str(tmp_path / "c.json"),
    ]
    assert main([*args, "--report", str(report), "--report-slices", "1"]) == 0
    assert len(list(report.glob("a_axial_*.png"))) == 1 and len(list(report.glob("b_axial_*.png"))) == 1
    markdown = (report / "report.md").read_text()
    assert "Summary over 2 cases" in markdown and "± " in markdown


def test_evaluate_runs_as_a_console_command(tmp_path):
    pred, ref = _case(tmp_path, "case1", shift=2)
    out = tmp_path / "m.json"
    done = subprocess.run(
        [sys.executable, "-m", "lesionseg", "evaluate", "--pred", str(pred), "--ref", str(ref), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert _no_nan_json(out)["labels"]["1"]["dice"] == pytest.approx(_sitk_dice(pred, ref, 1), abs=1e-12)
