"""``lesionseg info IMAGE``: size, spacing, orientation and value range of an image."""

from __future__ import annotations

import argparse
import json

import numpy as np

from lesionseg.io import read_image
from lesionseg.orientation import orientation_code

HELP = "describe an image's grid and values"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="NIfTI, NRRD, MetaImage file or DICOM series folder")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    image = read_image(args.image)
    info = {
        "size_ijk": list(image.size),
        "spacing_mm": [round(float(v), 6) for v in image.spacing],
        "origin_lps_mm": [round(float(v), 6) for v in image.origin],
        "direction_lps": np.round(image.direction, 6).tolist(),
        "orientation": orientation_code(image.direction),
        "dtype": str(image.array.dtype),
        "min": float(image.array.min()),
        "max": float(image.array.max()),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:>14}: {value}")
    return 0
