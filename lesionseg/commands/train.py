"""``lesionseg train``: train a segmentation model on a dataset folder (single process or under torchrun)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

HELP = "train a model on a dataset; writes a registry model folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset folder (dataset.json + manifest.json)")
    parser.add_argument(
        "--engine",
        choices=("lesionseg", "nnunet"),
        default="lesionseg",
        help="lesionseg: our MONAI recipe (--config); nnunet: nnU-Net v2 plans, preprocesses and trains in --output, "
        "and the result is imported into the models folder",
    )
    nnunet = parser.add_argument_group("nnU-Net (--engine nnunet)")
    nnunet.add_argument("--configuration", default="3d_fullres", help="3d_fullres (default), 2d, 3d_lowres or "
                        "3d_cascade_fullres (train 3d_lowres in the same --output first)")  # fmt: skip
    nnunet.add_argument("--fold", default="0", help="fold of nnU-Net's split, or 'all' (default 0: with a dataset "
                        "split, its train/validation cases)")  # fmt: skip
    nnunet.add_argument("--trainer", default="nnUNetTrainer", help="nnU-Net trainer class; nnUNetTrainer_LesionSegTiny "
                        "(1 epoch of 2 iterations) and nnUNetTrainer_LesionSeg5Epochs are quick tries")  # fmt: skip
    nnunet.add_argument("--plan-gpu-memory", type=float, metavar="GB", help="GPU memory nnU-Net's planner sizes "
                        "the patches for (its -gpu_memory_target; default 8 GB): a smaller one gives smaller patches, "
                        "and 3d_lowres with its cascade for images large against them")  # fmt: skip
    nnunet.add_argument("--model-id", help="id of the imported model (default: the --output folder's name)")
    nnunet.add_argument("--models-dir", help="models folder to import into (default $LESIONSEG_MODELS_DIR or "
                        "~/.lesionseg/models)")  # fmt: skip
    parser.add_argument(
        "--config", help="YAML/JSON config file or preset: tiny (default), spleen, lesion; --resume uses the run's own"
    )
    parser.add_argument("--output", required=True, help="model folder: checkpoints, metrics, spec.json, weights")
    parser.add_argument("--epochs", type=int, help="override the config's epoch count")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from checkpoint_latest.pt in --output, on the train/validation cases the run started with "
        "(refused when the dataset no longer holds them unchanged; see --new-split)",
    )
    parser.add_argument(
        "--new-split",
        action="store_true",
        help="with --resume: go on from the weights on a fresh split of the dataset as it is now",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new training in an --output folder that is not empty, replacing its model and checkpoints",
    )
    parser.add_argument(
        "--cascade",
        action="store_true",
        help="a two-step model: coarse on whole volumes (OUTPUT/stage1), fine on crops (OUTPUT/stage2), "
        "chained by OUTPUT/spec.json",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write TensorBoard logs to OUTPUT/tensorboard (sets training.tensorboard; needs the package)",
    )
    parser.add_argument("--progress", choices=("text", "jsonl"), default="text", help="jsonl: one JSON line per epoch")


def _forget_run(output: Path) -> None:
    """With --overwrite: drop the checkpoints that would make the new training a resume of the old one."""
    for folder in (output, output / "stage1", output / "stage2"):
        for name in ("checkpoint_latest.pt", "checkpoint_best.pt"):  # training.checkpoint's names
            (folder / name).unlink(missing_ok=True)
    (output / "cascade-config.json").unlink(missing_ok=True)


def run(args: argparse.Namespace) -> int:
    from lesionseg.errors import UserError
    from lesionseg.io.outputs import check_output_folder
    from lesionseg.jobs import protocol

    def report(event: dict) -> None:
        if args.progress == "jsonl":
            protocol.write_event(event)
        else:
            dice = f" dice {event['dice_mean']:.4f}" if event.get("dice_mean") is not None else ""
            logging.info("epoch %d: loss %.4f%s (%.1f s)", event["epoch"], event["loss"], dice, event["time_s"])

    if args.engine == "nnunet":
        return _run_nnunet(args, report)
    if args.plan_gpu_memory is not None:
        raise UserError("--plan-gpu-memory is for --engine nnunet (nnU-Net's planner)")
    if args.config is None and not args.resume:
        args.config = "tiny"
    if args.new_split and not args.resume:
        raise UserError("--new-split applies to --resume; a new training always splits the dataset afresh")
    if args.resume and args.overwrite:
        raise UserError("--resume continues the run in --output, --overwrite replaces it: give one of them")
    if not args.resume and not args.overwrite and (Path(args.output) / "checkpoint_latest.pt").is_file():
        raise UserError(
            f"{args.output} already holds a training checkpoint; add --resume to continue it, --overwrite to "
            "replace it with a new training, or choose a new --output"
        )
    config_path = args.config if args.config and Path(args.config).is_file() else None
    # A resumed run writes into its own folder: only a new training must not bury an earlier model unasked.
    output = check_output_folder(args.output, [args.dataset, config_path], args.overwrite or args.resume)
    for stage in ("stage1", "stage2") if args.cascade else ():
        if (output / stage).is_dir():
            check_output_folder(output / stage, [], True)  # clears what a killed stage left half-written
    if args.overwrite:
        _forget_run(output)
    # Imported after the checks: a refusal should not wait seconds for torch.
    import torch

    from lesionseg.training import load_config, train
    from lesionseg.training.loop import tensorboard_writer_class

    if args.threads:
        torch.set_num_threads(args.threads)
    config = args.config
    if args.tensorboard:
        tensorboard_writer_class()  # before a cascade writes its config: a missing package fails first
        if args.cascade and args.resume:
            raise UserError(
                "--tensorboard cannot be added to a cascade on --resume (it keeps the config it started with); "
                "resume without it, or start the cascade with --tensorboard"
            )
        if args.cascade:
            config = load_config(args.config, overrides={"training.tensorboard": True})
    try:
        if args.cascade:
            from lesionseg.training.cascade import train_cascade

            options = {"epochs": args.epochs, "device": args.device, "new_split": args.new_split}
            stages = train_cascade(args.dataset, config, args.output, args.resume, report, **options)
            if not stages:
                print(f"both stages in {args.output} had finished; nothing to resume")
                return 0
            result = stages[-1]
        else:
            on = args.tensorboard or None  # None keeps the config's (or on --resume, the run's) setting
            result = train(
                args.dataset, config, args.output, args.epochs, args.resume, args.device, report, on, args.new_split
            )
    except Exception as error:
        if args.progress == "jsonl":
            # The modules show this text: the one line the command line prints, never a traceback.
            protocol.write_event(protocol.error(error))
        raise
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun only rank 0 reports; it wrote the model
    # A cascade's model is the top folder, whose spec chains the two stage folders.
    model_folder = Path(args.output) if args.cascade else result.output
    summary = protocol.result(
        output=str(model_folder),
        last_epoch=result.last_epoch,
        best_epoch=result.best_epoch,
        best_dice=result.best_dice,
        stopped_early=result.stopped_early,
    )
    if args.progress == "jsonl":
        protocol.write_event(summary)
    else:
        print(
            f"model written to {model_folder} (epoch {result.last_epoch}, best Dice {result.best_dice})",
            file=sys.stdout,
        )
    return 0


def _run_nnunet(args: argparse.Namespace, report) -> int:
    """``--engine nnunet``: see :mod:`lesionseg.training.nnunet`."""
    from lesionseg.errors import UserError
    from lesionseg.jobs import protocol
    from lesionseg.models.registry import models_dir
    from lesionseg.training import nnunet

    if args.cascade or args.config or args.new_split or args.tensorboard or args.epochs:
        raise UserError("--cascade, --config, --epochs, --new-split and --tensorboard are for --engine lesionseg; "
                        "nnU-Net's trainer class sets the epochs (--trainer)")  # fmt: skip
    work = Path(args.output)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    def say(text: str) -> None:
        if args.progress == "jsonl":
            protocol.write_event(protocol.message(text))
        else:
            logging.info("%s", text)

    def epoch(event: dict) -> None:
        if args.progress == "jsonl":
            protocol.write_event(event)
        else:
            report(event)

    protocol.exit_on_terminate()
    try:
        result = nnunet.train_nnunet(
            args.dataset, args.configuration, work, models_dir(args.models_dir), args.model_id or work.resolve().name,
            args.fold, args.trainer, args.resume, args.overwrite, args.device, args.threads or 1, epoch, say,
            args.plan_gpu_memory,
        )  # fmt: skip
    except Exception as error:
        if args.progress == "jsonl":
            protocol.write_event(protocol.error(error))
        raise
    summary = protocol.result(
        output=str(result.model_folder),
        last_epoch=result.last_epoch,
        best_epoch=None,
        best_dice=result.best_dice,
        stopped_early=None,
        engine="nnunet",
        nnunet_results=str(result.results_folder),
    )
    if args.progress == "jsonl":
        protocol.write_event(summary)
    else:
        print(f"nnU-Net model imported as {result.model_folder} (segment --model {result.model_folder.name})")
    return 0
