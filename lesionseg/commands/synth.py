"""``lesionseg synth``: write a cohort of synthetic abdominal-pelvic CT phantoms (not patient data)."""

from __future__ import annotations

import argparse
import logging
import time

from lesionseg.data.study import ORIENTATIONS, SIZE_PRESETS, SynthOptions, generate_cohort
from lesionseg.data.tissues import PHASES

log = logging.getLogger(__name__)


HELP = "generate synthetic CT phantoms with labels and lesion truth"
DESCRIPTION = (
    "Generate synthetic abdominal-pelvic CT phantoms (spleen, liver, kidneys, bladder, prostate, bone, "
    "bone and nodal metastases) with labels and per-lesion ground truth. The data are computed "
    "phantoms, not patients, and are not for clinical use."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", "-o", required=True, help="folder to write the cohort into (new or empty)")
    parser.add_argument("--cases", "-n", type=int, default=1, help="number of cases (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed and options, same data")
    parser.add_argument("--first", type=int, default=0, help="index of the first case (case k is always the same)")
    parser.add_argument(
        "--size",
        choices=sorted(SIZE_PRESETS),
        default="small",
        help="small: ~96-128 pixels in-plane, 3-5 mm (fast tests, demo); full: 512x512, 0.6-1.0 mm",
    )
    parser.add_argument(
        "--max-lesions", type=int, default=6, help="most lesions per case (default 6; a quarter of cases get none)"
    )
    parser.add_argument(
        "--orientation",
        default="mixed",
        help=f"storage orientation code such as LPS or RAS, or 'mixed' (default: draws from {', '.join(ORIENTATIONS)})",
    )
    parser.add_argument("--phase", choices=PHASES, default=None, help="contrast phase (default: drawn per case)")
    parser.add_argument("--dicom", action="store_true", help="also write each image as a DICOM CT series")
    parser.add_argument("--overwrite", action="store_true", help="write into a folder that is not empty")


def run(args: argparse.Namespace) -> int:
    options = SynthOptions(size=args.size, max_lesions=args.max_lesions, orientation=args.orientation, phase=args.phase)
    start = time.perf_counter()
    cohort = generate_cohort(
        args.output, args.cases, args.seed, options, dicom=args.dicom, first=args.first, overwrite=args.overwrite
    )
    lesions = sum(row["lesions"] for row in cohort["cases"])
    print(
        f"wrote {len(cohort['cases'])} synthetic cases ({lesions} lesions) to {args.output} "
        f"in {time.perf_counter() - start:.1f} s; synthetic phantoms, not for clinical use"
    )
    return 0
