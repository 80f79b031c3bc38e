"""``lesionseg segment``: run a model on an image file or DICOM folder and write a labelmap."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import traceback
from typing import Any

from lesionseg.errors import EXIT_FAILURE, describe
from lesionseg.io.outputs import check_output


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("segment", help="segment an image with a model")
    parser.add_argument("--model", required=True, help="model id (see `lesionseg models list`), model folder or bundle")
    parser.add_argument("--input", required=True, help=".nrrd, .nii/.nii.gz or a DICOM series folder")
    parser.add_argument("--output", required=True, help="labelmap: .nii.gz, .nrrd or .seg.nrrd (Slicer segmentation)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--progress", choices=["jsonl"], help="print JSON-lines events on stdout")
    parser.add_argument("--crop-body", action="store_true", help="skip the air around the body (CT: > -500 HU)")
    parser.add_argument(
        "--threshold",
        type=float,
        metavar="P",
        help="models with one foreground label: foreground where its probability exceeds P "
        "(default: the spec's inference.threshold, else the most probable class); lower finds more",
    )
    parser.add_argument(
        "--models-dir", help="user models folder (default $LESIONSEG_MODELS_DIR or ~/.lesionseg/models)"
    )
    parser.add_argument(
        "--allow-modality",
        metavar="MOD",
        help="run on a DICOM series of modality MOD (e.g. MR) although the model names another (e.g. CT); "
        "without it such a series is refused, as the model's result on it is not validated",
    )
    parser.set_defaults(func=run)


def emit_jsonl(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class TextBar:
    """A one-line progress bar on stderr."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.stage = ""

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "stage":
            self.stage = event["stage"]
        elif kind == "progress":
            filled = int(event["percent"] / 100 * 30)
            self.stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {event['percent']:5.1f}% {self.stage:<12}")
            self.stream.flush()
        elif kind in ("message", "warning"):
            self.stream.write(f"\r{kind}: {event['text']}\n")


def _terminate_cleanly(signum, _frame):
    # Raising here unwinds through atomic_path, which deletes its temporary file: no half-written output.
    raise SystemExit(128 + signum)


def run(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _terminate_cleanly)
    sink = emit_jsonl if args.progress == "jsonl" else TextBar()
    try:
        check_output(args.output, [args.input, args.model], args.overwrite)  # before minutes of work, not after
        from lesionseg.inference.pipeline import segment_file

        result = segment_file(
            args.model,
            args.input,
            args.output,
            args.device,
            sink,
            crop_body=args.crop_body,
            models_dir=args.models_dir,
            threshold=args.threshold,
            allow_modality=args.allow_modality,
        )
    except Exception as error:
        if args.progress != "jsonl":
            if sink.stage:
                sys.stderr.write("\n")  # end the progress bar's line before the error's
            raise
        # The modules read this event: the same one line as the command line prints, never a traceback.
        text, status = describe(error)
        event = {"event": "error", "type": type(error).__name__, "text": text, "exit_code": status}
        if status == EXIT_FAILURE and getattr(args, "verbose", False):
            event["traceback"] = traceback.format_exc()
        emit_jsonl(event)
        raise
    if args.progress == "jsonl":
        emit_jsonl(result)
    else:
        sys.stderr.write("\n")
        print(result["output"])
    return 0
