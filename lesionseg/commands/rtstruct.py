"""``lesionseg rtstruct``: a label map as a DICOM RT Structure Set on its reference CT series."""

from __future__ import annotations

import argparse

from lesionseg.io.outputs import check_output
from lesionseg.rtstruct.build import ALGORITHM_TYPES, INTERPRETED_TYPES
from lesionseg.rtstruct.export import export_rtstruct
from lesionseg.rtstruct.segments import add_export_arguments, parse_names


def parse_interpreted_type(text: str) -> str | dict[int, str]:
    """``GTV`` for every ROI, or ``1=ORGAN,2=GTV`` per label (unlisted labels stay ORGAN)."""
    if "=" not in text:
        return text.strip().upper()
    out = {}
    for item in text.split(","):
        value, _, kind = item.partition("=")
        if not value.strip().isdigit():
            raise ValueError(f"--type: cannot read {item!r}; write TYPE or VALUE=TYPE pairs, e.g. 1=ORGAN,2=GTV")
        out[int(value)] = kind.strip().upper()
    return out


HELP = "export a label map as an RTSTRUCT on a DICOM series"
DESCRIPTION = (
    "Write one ROI per label, drawn slice by slice on the reference series' own planes along voxel edges. "
    "Holes are cut in with keyholes (one polygon per connected piece), which readers that fill each "
    "contour on its own, plastimatch among them, read back exactly."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_export_arguments(parser, "RTSTRUCT file to write")
    parser.add_argument(
        "--smooth", type=float, default=0.0, metavar="MM", help="Gaussian sigma in mm (default 0: none)"
    )
    parser.add_argument(
        "--type",
        default="ORGAN",
        help="RTROIInterpretedType for every ROI, or VALUE=TYPE pairs like 1=ORGAN,2=GTV (default ORGAN); "
        f"one of {', '.join(INTERPRETED_TYPES)}",
    )
    parser.add_argument(
        "--algorithm",
        default="AUTOMATIC",
        type=str.upper,
        choices=ALGORITHM_TYPES,
        help="ROIGenerationAlgorithm: AUTOMATIC for model output (default), MANUAL for hand-drawn labels",
    )


def run(args: argparse.Namespace) -> int:
    check_output(args.output, [args.reference, args.seg], args.overwrite)
    output = export_rtstruct(
        args.reference,
        args.seg,
        args.output,
        names=parse_names(args.names),
        smooth_mm=args.smooth,
        interpreted_type=parse_interpreted_type(args.type),
        algorithm=args.algorithm,
    )
    print(f"wrote {output}")
    return 0
