"""``lesionseg dicomseg``: a label map as a DICOM Segmentation (BINARY) on its reference series."""

from __future__ import annotations

import argparse

from lesionseg.io.outputs import check_output
from lesionseg.rtstruct.segments import add_export_arguments, parse_names

HELP = "export a label map as a DICOM SEG on a DICOM series"
DESCRIPTION = (
    "Write one BINARY segment per label, one frame per reference slice that holds it, "
    "with SNOMED CT property codes (from the label's terminology, its name, or generic Tissue)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_export_arguments(parser, "DICOM SEG file to write")
    parser.add_argument(
        "--algorithm",
        default="AUTOMATIC",
        type=str.upper,
        choices=("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL"),
        help="SegmentAlgorithmType: AUTOMATIC for model output (default), MANUAL for hand-drawn labels",
    )


def run(args: argparse.Namespace) -> int:
    check_output(args.output, [args.reference, args.seg], args.overwrite)
    from lesionseg.dicomseg import export_dicomseg

    output = export_dicomseg(
        args.reference, args.seg, args.output, names=parse_names(args.names), algorithm=args.algorithm
    )
    print(f"wrote {output}")
    return 0
