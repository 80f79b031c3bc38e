"""``lesionseg demo``: one synthetic patient from DICOM to report (see lesionseg.apps.demo)."""

from __future__ import annotations

import argparse

HELP = "run the end-to-end demo on a synthetic patient (phantom data, not for clinical use)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="demo-output", help="folder for the study, results and report")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def run(args: argparse.Namespace) -> int:
    from lesionseg.apps.demo import run_demo
    from lesionseg.io.outputs import check_output_folder

    # The demo replaces its own earlier folder (it marks it); this refuses a file or a place it cannot write.
    check_output_folder(args.output, [], overwrite=True)

    run_demo(args.output, device=args.device)
    return 0
