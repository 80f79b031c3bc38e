"""``lesionseg segment``: run a model on an image file or DICOM folder and write a labelmap."""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Any

HELP = "segment an image with a model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model id (see `lesionseg models list`), model folder or bundle")
    add_channel_options(parser, "--input", "model", ".nrrd, .nii/.nii.gz or a DICOM series folder")
    parser.add_argument("--output", required=True, help="labelmap: .nii.gz, .nrrd or .seg.nrrd (Slicer segmentation)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--progress", choices=["jsonl"], help="print JSON-lines events on stdout")
    parser.add_argument(
        "--backend",
        choices=["auto", "torch", "openvino"],
        default="auto",
        help="what runs the network (default auto: OpenVINO when the network runs on the CPU and openvino is "
        "installed, else torch; on CUDA always torch). The compiled network is cached in the model folder",
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        help="the OpenVINO CPU network's precision (default: the spec's inference.precision, else fp32); "
        "bf16 is faster on CPUs with BF16 (AVX-512 BF16, AMX) and runs fp32 elsewhere",
    )
    parser.add_argument("--crop-body", action="store_true", help="skip the air around the body (CT: > -500 HU)")
    parser.add_argument(
        "--threshold",
        type=float,
        metavar="P",
        help="models with one foreground label: foreground where its probability exceeds P "
        "(default: the spec's inference.threshold, else the most probable class); lower finds more",
    )
    parser.add_argument(
        "--uncertainty",
        choices=["none", "tta"],
        default="none",
        help="tta: flip test-time augmentation (the spec's inference.tta flips, those the model was trained with; "
        "N flips cost N+1 network passes, and a model trained without flips runs one pass), "
        "writing beside --output the entropy and mutual information volumes (NAME_entropy, "
        "NAME_mutual_information) and each predicted lesion's confidence, volume and mean probability "
        "(NAME_lesions.json/.csv). Default none",
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
    nnunet = parser.add_argument_group("nnU-Net result folders (--model Dataset*/ or Dataset*/Trainer__Plans__config/)")
    nnunet.add_argument(
        "--configuration",
        help="in a dataset folder: 2d, 3d_fullres, 3d_lowres or 3d_cascade_fullres (default: 3d_fullres)",
    )
    nnunet.add_argument("--folds", nargs="+", metavar="F", help="folds to average (default: every fold present)")
    nnunet.add_argument(
        "--checkpoint", default="checkpoint_final.pth", help="checkpoint file name (default checkpoint_final.pth)"
    )
    nnunet.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mirroring test-time augmentation (default: on for a GPU, off on the CPU, where it is 4-8x slower)",
    )
    nnunet.add_argument("--tile-step-size", type=float, default=0.5, help="sliding-window step, fraction of a patch")


def add_channel_options(parser: argparse.ArgumentParser, option: str, owner: str, image_help: str) -> None:
    """``option`` (``--input``, ``--image``) once per channel in order, or ``--channel NAME=PATH`` by name."""
    parser.add_argument(
        option,
        action="append",
        default=[],
        help=f"{image_help}; a {owner} with several channels (e.g. CT and PET) takes {option} once per channel, in "
        f"the {owner}'s order. Further channels are resampled (linearly) onto the first one's grid",
    )
    parser.add_argument(
        "--channel",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help=f"a multi-channel {owner}'s image by channel name (e.g. --channel CT=ct/ --channel PET=pet.nii.gz), "
        f"instead of {option}",
    )


def _nnunet_options(args: argparse.Namespace):
    from lesionseg.inference.nnunet import NnunetOptions

    return NnunetOptions(args.configuration, args.folds, args.checkpoint, args.tta, args.tile_step_size)


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


def run(args: argparse.Namespace) -> int:
    from lesionseg.jobs import protocol

    protocol.exit_on_terminate()  # unwinds through atomic_path, which deletes its temporary file
    sink = protocol.write_event if args.progress == "jsonl" else TextBar()
    try:
        from lesionseg.io.outputs import check_output  # here, not at the top: registering the command stays cheap

        if not args.input and not args.channel:
            raise ValueError("give the image to segment with --input PATH (or --channel NAME=PATH per channel)")
        given = [*args.input, *(item.partition("=")[2] for item in args.channel if "=" in item)]
        check_output(args.output, [*given, args.model], args.overwrite)  # before minutes of work, not after
        if args.uncertainty != "none":
            from lesionseg.inference.uncertainty import uncertainty_outputs

            for beside in uncertainty_outputs(args.output).values():
                check_output(beside, [*given, args.model], args.overwrite)
        from lesionseg.inference.pipeline import segment_file
        from lesionseg.models.nnunet import is_nnunet_folder
        from lesionseg.models.nnunet_import import imported_model_folder

        nnunet_model = imported_model_folder(args.model, args.models_dir)
        if nnunet_model is None and is_nnunet_folder(args.model):
            nnunet_model = args.model
        if nnunet_model is not None:
            from lesionseg.inference.nnunet import segment_file_nnunet

            if args.uncertainty != "none":
                raise ValueError("--uncertainty applies to LesionSeg's own models, not yet to nnU-Net result folders")
            if args.threshold is not None:
                raise ValueError(
                    "--threshold applies to LesionSeg's own models, not yet to nnU-Net result folders; leave it out"
                )
            result = segment_file_nnunet(
                nnunet_model,
                args.input,
                args.output,
                args.device,
                sink,
                options=_nnunet_options(args),
                named_channels=args.channel,
                crop_body=args.crop_body,
            )
        else:
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
                backend=args.backend,
                precision=args.precision,
                named_channels=args.channel,
                uncertainty=args.uncertainty,
            )
    except Exception as error:
        if args.progress != "jsonl":
            if sink.stage:
                sys.stderr.write("\n")  # end the progress bar's line before the error's
            raise
        # The modules read this event: the same one line as the command line prints; a traceback only on request.
        protocol.write_event(protocol.error(error, traceback.format_exc() if getattr(args, "verbose", False) else None))
        raise
    if args.progress == "jsonl":
        protocol.write_event(result)
    else:
        sys.stderr.write("\n")
        print(result["output"])
    return 0
