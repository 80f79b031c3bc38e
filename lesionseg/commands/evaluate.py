"""``lesionseg evaluate``: Dice, distances, volumes and lesion-wise metrics of predictions against references.

One case: ``--pred A.nii.gz --ref B.nii.gz``.  A cohort: ``--pred DIR --ref DIR`` (paired by file name) or
``--pairs pairs.csv`` (columns ``case,pred,ref`` and optionally ``image``).  Definitions: :mod:`lesionseg.metrics`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np

from lesionseg.errors import UserError
from lesionseg.image import Image
from lesionseg.io import read_image
from lesionseg.io.outputs import check_output, check_output_folder
from lesionseg.labels import LabelInfo, label_table
from lesionseg.metrics import DEFINITIONS, evaluate_case
from lesionseg.metrics.case import case_detection
from lesionseg.metrics.cohort import CaseFiles, case_name, pair_folders, read_pairs_csv, summarize
from lesionseg.metrics.detection import pool_detection
from lesionseg.metrics.tables import (
    detection_csv_path,
    lesion_csv_path,
    write_case_csv,
    write_cohort_csv,
    write_detection_csv,
    write_json,
)

log = logging.getLogger(__name__)


HELP = "metrics of predicted labelmaps against reference labelmaps"
DESCRIPTION = (
    "Dice, IoU, HD95, HD, ASSD and volumes per label, lesion-wise TP/FP/FN with autoPET's FP and FN "
    "volumes, and detection by size (sensitivity, false positives per case, a FROC point per --froc set). "
    "Give one case (--pred FILE --ref FILE), two folders paired by file name, or --pairs CSV."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", help="predicted labelmap, or a folder of them")
    parser.add_argument("--ref", help="reference labelmap on the same grid, or a folder of them")
    parser.add_argument("--pairs", help="CSV with columns case,pred,ref (and optionally image) instead of --pred/--ref")
    parser.add_argument("--output", "-o", required=True, help="metrics.json, or metrics.csv (+ metrics_lesions.csv)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output (and --report's files) if present")
    parser.add_argument("--labels", help="label names, e.g. 1=Spleen,2=Liver (named labels are always reported)")
    parser.add_argument(
        "--lesion-labels", help="label values that count as lesions, e.g. 2,3 (default: all foreground merged)"
    )
    parser.add_argument(
        "--min-lesion-mm3",
        type=float,
        default=0.0,
        help=(
            "lesion-wise TP/FP/FN only: drop components under this volume from BOTH images before matching, so a "
            "lesion touched only by a smaller prediction counts as missed (default 0); for detection by size use "
            "--min-reference-mm and --min-prediction-mm3"
        ),
    )
    parser.add_argument(
        "--min-reference-mm",
        type=float,
        default=0.0,
        help=(
            "detection: sensitivity over reference lesions whose longest extent (between voxel corners) is at "
            "least this many mm, e.g. 10; smaller ones are kept, so a prediction on them is no false positive"
        ),
    )
    parser.add_argument(
        "--min-prediction-mm3",
        type=float,
        default=0.0,
        help="detection: a stray predicted component is a false positive only from this volume up (default 0)",
    )
    parser.add_argument(
        "--froc",
        action="append",
        default=[],
        metavar="THRESHOLD=PATH",
        help=(
            "a FROC point: the predictions made at this threshold (a file, or a folder named like --ref's); "
            "repeat for each threshold, e.g. --froc 0.3=p30/ --froc 0.5=p50/"
        ),
    )
    parser.add_argument(
        "--connectivity", type=int, choices=(6, 18, 26), default=26, help="lesion connectivity (default 26)"
    )
    parser.add_argument("--report", metavar="DIR", help="write PNG overlays and report.md / report.html here")
    parser.add_argument("--image", help="intensity image (a folder for a cohort) shown under the report's contours")
    parser.add_argument("--report-slices", type=int, default=3, help="overlay slices per case (default 3)")


def parse_label_names(text: str | None) -> dict[int, str]:
    """``"1=Spleen,2=Liver"`` → ``{1: "Spleen", 2: "Liver"}``."""
    names: dict[int, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        value, sep, name = item.partition("=")
        if not sep or not value.strip().isdigit() or int(value) <= 0 or not name.strip():
            raise UserError(
                f"--labels: cannot read {item.strip()!r}; write positive values with names: 1=Spleen,2=Liver"
            )
        names[int(value)] = name.strip()
    return names


def parse_values(text: str | None) -> list[int] | None:
    """``"2,3"`` → ``[2, 3]``; None when not given."""
    if text is None:
        return None
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items or not all(item.isdigit() and int(item) > 0 for item in items):
        raise UserError(f"--lesion-labels: cannot read {text!r}; give positive label values like 2,3")
    return [int(item) for item in items]


def parse_froc(items: list[str]) -> dict[float, Path]:
    """``["0.3=p30", "0.5=p50"]`` → ``{0.3: Path("p30"), 0.5: Path("p50")}``."""
    sets: dict[float, Path] = {}
    for item in items:
        value, sep, path = item.partition("=")
        try:
            threshold = float(value)
        except ValueError:
            threshold = None
        if not sep or threshold is None or not np.isfinite(threshold) or not path.strip():
            raise UserError(f"--froc: cannot read {item!r}; write THRESHOLD=PATH, e.g. --froc 0.5=predictions_50/")
        if threshold in sets:
            raise UserError(f"--froc: threshold {value} is given twice; give each threshold once")
        sets[threshold] = Path(path.strip())
    return sets


def _froc(args: argparse.Namespace, cases: list[CaseFiles] | None) -> list[dict[str, Any]]:
    """One pooled detection point per --froc prediction set, by threshold."""
    points = []
    for threshold, where in sorted(args.froc_sets.items()):
        if cases is None:
            if not where.is_file():
                raise UserError(f"--froc {threshold:g}: {where} is not a file; for one case give one prediction file")
            pairs = [(where, Path(args.ref))]
        elif not where.is_dir():
            raise UserError(f"--froc {threshold:g}: {where} is not a folder; for a cohort give a folder of predictions")
        else:
            found = {name: path for path in where.iterdir() if (name := case_name(path)) is not None}
            lacking = [files.case for files in cases if files.case not in found]
            if lacking:
                raise UserError(
                    f"--froc {threshold:g}: {where} has no prediction for case(s) {', '.join(lacking[:5])}; "
                    "name each like its reference"
                )
            pairs = [(found[files.case], files.ref) for files in cases]
        rows = []
        for pred_path, ref_path in pairs:
            try:
                rows.append(case_detection(read_image(pred_path), read_image(ref_path), **_detection_options(args)))
            except (ValueError, FileNotFoundError) as error:
                raise UserError(f"--froc {threshold:g}, {pred_path.name}: {error}") from error
        points.append({"threshold": threshold, **pool_detection(rows)})
    return points


def _output_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise UserError(f"--output {path.name}: name a .json or .csv file")
    return suffix[1:]


def _cases(args: argparse.Namespace) -> list[CaseFiles] | None:
    """The cohort's cases, or None for a single case."""
    if args.pairs:
        if args.pred or args.ref:
            raise UserError("give either --pairs CSV or --pred/--ref, not both")
        if args.image:
            raise UserError("with --pairs, put report images in an 'image' column of the CSV instead of --image")
        return read_pairs_csv(Path(args.pairs))
    if not args.pred or not args.ref:
        raise UserError("give --pred and --ref (files or folders), or --pairs CSV")
    pred, ref = Path(args.pred), Path(args.ref)
    for path, flag in ((pred, "--pred"), (ref, "--ref")):
        if not path.exists():
            raise FileNotFoundError(f"{flag}: no such file or folder: {path}")
    if pred.is_dir() != ref.is_dir():
        raise UserError("--pred and --ref must both be files (one case) or both folders (a cohort)")
    if not pred.is_dir():
        return None
    image_dir = Path(args.image) if args.image else None
    if image_dir is not None and not image_dir.is_dir():
        raise UserError("for a cohort, --image must be a folder of images named like the references")
    return pair_folders(pred, ref, image_dir)


def _label_infos(result_labels: dict[str, Any], names: dict[int, str]) -> dict[int, LabelInfo]:
    return {info.value: info for info in label_table([int(v) for v in result_labels] + list(names), names)}


def _detection_options(args: argparse.Namespace) -> dict[str, Any]:
    """What decides which lesions count, the same for every case and every --froc threshold."""
    return {
        "lesion_labels": args.lesion_values,
        "min_reference_mm": args.min_reference_mm,
        "min_prediction_mm3": args.min_prediction_mm3,
        "connectivity": args.connectivity,
    }


def _evaluate(pred_path: Path, ref_path: Path, args: argparse.Namespace) -> tuple[dict[str, Any], Image, Image]:
    pred, ref = read_image(pred_path), read_image(ref_path)
    options = _detection_options(args)
    result = evaluate_case(pred, ref, label_names=args.label_names, min_lesion_mm3=args.min_lesion_mm3, **options)
    return {"pred": str(pred_path), "ref": str(ref_path), **result}, pred, ref


def run(args: argparse.Namespace) -> int:
    from lesionseg.report import case_overlays, case_sections, cohort_sections, write_report

    output = Path(args.output)
    kind = _output_kind(output)
    args.label_names = parse_label_names(args.labels)
    args.lesion_values = parse_values(args.lesion_labels)
    if args.min_lesion_mm3 < 0:
        raise UserError(f"--min-lesion-mm3 must be 0 or more, got {args.min_lesion_mm3}")
    minimums = (("--min-reference-mm", args.min_reference_mm), ("--min-prediction-mm3", args.min_prediction_mm3))
    for flag, value in minimums:
        if not np.isfinite(value) or value < 0:
            raise UserError(f"{flag} must be 0 or more, got {value}")
    args.froc_sets = parse_froc(args.froc)
    if args.image and not args.report:
        raise UserError("--image only sets the report's background; add --report DIR")
    if args.report_slices < 1:
        raise UserError("--report-slices must be 1 or more")
    report_dir = Path(args.report) if args.report else None
    inputs = [args.pred, args.ref, args.pairs, args.image, *map(str, args.froc_sets.values())]
    check_output(output, inputs, args.overwrite)
    if kind == "csv":
        check_output(lesion_csv_path(output), inputs, args.overwrite)
        check_output(detection_csv_path(output), inputs, args.overwrite)
    if report_dir is not None:
        check_output_folder(report_dir, inputs, args.overwrite, flag="--report")
    cases = _cases(args)

    if cases is None:
        result, pred, ref = _evaluate(Path(args.pred), Path(args.ref), args)
        result["froc"] = _froc(args, None)
        result["definitions"] = DEFINITIONS
        written = write_json(output, result) if kind == "json" else write_case_csv(output, result)
        if kind == "csv":
            written += write_detection_csv(output, pool_detection([result["detection"]]), result["froc"])
        if report_dir is not None:
            image = read_image(args.image) if args.image else None
            case = _case_title(Path(args.pred))
            labels = _label_infos(result["labels"], args.label_names)
            pngs = case_overlays(report_dir, case, pred, ref, image, args.report_slices, labels)
            written += write_report(
                report_dir, f"LesionSeg evaluation: {case}", case_sections(result, pngs, report_dir)
            )
        for key, row in result["labels"].items():
            hd95 = "—" if row["hd95_mm"] is None else f"{row['hd95_mm']:.2f} mm"
            print(f"label {key} {row['name']}: Dice {row['dice']:.4f}, HD95 {hd95}")
        _print_lesions(result["lesions"])
        _print_detection(pool_detection([result["detection"]]), result["froc"], args)
    else:
        results: list[dict[str, Any]] = []
        overlays: dict[str, list[Path]] = {}
        for files in cases:
            try:
                result, pred, ref = _evaluate(files.pred, files.ref, args)
                if report_dir is not None:
                    image = read_image(files.image) if files.image else None
                    labels = _label_infos(result["labels"], args.label_names)
                    overlays[files.case] = case_overlays(
                        report_dir, files.case, pred, ref, image, args.report_slices, labels
                    )
            except (ValueError, FileNotFoundError) as error:
                raise UserError(f"case {files.case}: {error}") from error
            results.append({"case": files.case, **result})
            log.info("%s: foreground Dice %.4f", files.case, result["foreground"]["dice"])
        cohort = {"cases": results, "summary": summarize(results), "definitions": DEFINITIONS}
        cohort["froc"] = _froc(args, cases)
        written = write_json(output, cohort) if kind == "json" else write_cohort_csv(output, cohort)
        if kind == "csv":
            written += write_detection_csv(output, cohort["summary"]["detection"], cohort["froc"])
        if report_dir is not None:
            sections = cohort_sections(cohort, overlays, report_dir)
            written += write_report(report_dir, f"LesionSeg evaluation: {len(results)} cases", sections)
        for key, row in cohort["summary"]["labels"].items():
            dice = row["dice"]
            spread = f" ± {dice['std']:.4f}" if dice["std"] is not None else ""
            print(f"label {key} {row['name']}: Dice {dice['mean']:.4f}{spread} over {dice['n']} cases")
        _print_lesions(cohort["summary"]["lesions"]["totals"])
        _print_detection(cohort["summary"]["detection"], cohort["froc"], args)
    for path in written:
        log.info("wrote %s", path)
    return 0


def _case_title(path: Path) -> str:
    return case_name(path) or path.name


def _print_lesions(lesions: dict[str, Any]) -> None:
    print(f"lesions: {lesions['n_ref']} reference, TP {lesions['tp']}, FN {lesions['fn']}, FP {lesions['fp']}")


def _print_detection(pooled: dict[str, Any], froc: list[dict[str, Any]], args: argparse.Namespace) -> None:
    def line(point: dict[str, Any]) -> str:
        sens = "—" if point["sensitivity"] is None else f"{point['sensitivity']:.3f}"
        dice = "—" if point["dice_pooled"] is None else f"{point['dice_pooled']:.3f}"
        return (
            f"sensitivity {sens} ({point['tp']}/{point['n_ref']}), FP {point['fp_per_case']:.2f} per case, "
            f"lesion Dice {dice} pooled"
        )

    print(
        f"detection (reference lesions >= {args.min_reference_mm:g} mm, FP >= {args.min_prediction_mm3:g} mm³): "
        + line(pooled)
    )
    for point in froc:
        print(f"FROC threshold {point['threshold']:g}: {line(point)}")
