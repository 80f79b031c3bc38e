"""``lesionseg dicom scan DIR`` and ``lesionseg dicom convert DIR --output OUT``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pydicom and the DICOM readers are imported when a dicom command runs, not to register it
    from lesionseg.dicom.series import Scan, Series


HELP = "find DICOM series in a folder tree and convert them"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="dicom_command", metavar="ACTION", required=True)

    scan = actions.add_parser("scan", help="list every series under a folder (patient, study, series, warnings)")
    scan.add_argument("folder", help="folder to search, recursively")
    scan.add_argument("--json", action="store_true", help="print JSON instead of a table")
    scan.set_defaults(func=run_scan)

    convert = actions.add_parser(
        "convert",
        help="write each image series as OUT/<patient>/<study>/<series>.nii.gz; all or nothing: when a file "
        "cannot be read or a series cannot be built, nothing is written (exit 2)",
    )
    convert.add_argument("folder", help="folder to search, recursively")
    convert.add_argument("--output", "-o", required=True, help="output folder")
    convert.add_argument("--overwrite", action="store_true", help="write into an output folder that is not empty")
    convert.add_argument("--series", help="convert only this SeriesInstanceUID (or UID#n for part of a split series)")
    convert.add_argument(
        "--strict",
        action="store_true",
        help="refuse series with irregular slice spacing or gantry tilt instead of resampling them",
    )
    convert.set_defaults(func=run_convert)


def _spacing(series: Series) -> str:
    if series.geometry is None:
        return "-"
    return "x".join(f"{v:.4g}" for v in series.geometry.spacing)


def _study(series: Series) -> str:
    first = series.first
    label = " ".join(p for p in (first.text("StudyDate"), first.text("StudyDescription")) if p)
    return label or series.study_uid[-12:]


def _series(series: Series) -> str:
    first = series.first
    return " ".join(p for p in (first.text("SeriesNumber"), first.text("SeriesDescription")) if p) or "-"


def scan_rows(scan: Scan) -> list[dict]:
    return [
        {
            "patient": s.patient_id,
            "study": _study(s),
            "series": _series(s),
            "modality": s.modality,
            "slices": len(s.slices),
            "spacing": _spacing(s),
            "warnings": s.warnings,
            "uid": s.key,
            "study_uid": s.study_uid,
            "loadable": s.is_volume,
        }
        for s in scan.series
    ]


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def print_table(scan: Scan) -> None:
    rows = scan_rows(scan)
    columns = [("PATIENT", 16), ("STUDY", 24), ("SERIES", 24), ("MOD", 5), ("SLICES", 6), ("SPACING", 18)]
    print("  ".join(f"{name:<{width}}" for name, width in columns) + "  WARNINGS / UID")
    for row in rows:
        cells = [row["patient"], row["study"], row["series"], row["modality"], str(row["slices"]), row["spacing"]]
        line = "  ".join(f"{_clip(c, w):<{w}}" for c, (_, w) in zip(cells, columns, strict=True))
        print(f"{line}  {'; '.join(row['warnings']) or 'ok'}")
        print(f"{'':<{sum(w + 2 for _, w in columns)}}uid {row['uid']}")
    special = f", {len(scan.special)} not a regular file (not read)" if scan.special else ""
    print(
        f"{len(rows)} series, {len(scan.skipped)} non-DICOM file(s) skipped, {len(scan.unreadable)} unreadable{special}"
    )
    for path, why in scan.unreadable:
        print(f"unreadable: {path}: {why}")
    for path, kind in scan.special:
        print(f"skipped, not a regular file: {path} ({kind})")


def run_scan(args: argparse.Namespace) -> int:
    from lesionseg.dicom.series import scan_folder

    scan = scan_folder(args.folder)
    if args.json:
        payload = {
            "folder": str(scan.folder),
            "series": scan_rows(scan),
            "skipped": [str(p) for p in scan.skipped],
            "unreadable": [{"file": str(p), "reason": why} for p, why in scan.unreadable],
            "not_regular_files": [{"file": str(p), "kind": kind} for p, kind in scan.special],
        }
        print(json.dumps(payload, indent=2))
    else:
        print_table(scan)
    return 1 if scan.unreadable else 0


def run_convert(args: argparse.Namespace) -> int:
    from lesionseg.dicom.convert import convert_folder
    from lesionseg.io.outputs import check_output_folder, remove_stale_folders

    remove_stale_folders(args.output, ".lesionseg-convert-")  # the staging folder of a killed earlier run
    check_output_folder(args.output, [args.folder], args.overwrite)
    policy = "error" if args.strict else "correct"
    # Unreadable files and series that cannot be built raise ValueError (exit 2): nothing is written then.
    result = convert_folder(args.folder, args.output, series_uid=args.series, irregular=policy, tilt=policy)
    for item in result.converted:
        print(f"wrote {item.image_path}")
        for message in item.warnings:
            print(f"  warning: {message}")
    for path, kind in result.scan.special:
        print(f"  skipped, not a regular file: {path} ({kind})")
    if not result.converted:
        print(f"no image series found under {args.folder}", file=sys.stderr)
        return 1
    return 0
