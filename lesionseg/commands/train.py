"""``lesionseg train``: train a segmentation model on a dataset folder (single process or under torchrun)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a model on a dataset; writes a registry model folder")
    parser.add_argument("--dataset", required=True, help="dataset folder (dataset.json + manifest.json)")
    parser.add_argument(
        "--config", help="YAML/JSON config file or preset: tiny (default), spleen, lesion; --resume uses the run's own"
    )
    parser.add_argument("--output", required=True, help="model folder: checkpoints, metrics, spec.json, weights")
    parser.add_argument("--epochs", type=int, help="override the config's epoch count")
    parser.add_argument("--resume", action="store_true", help="continue from checkpoint_latest.pt in --output")
    parser.add_argument(
        "--cascade",
        action="store_true",
        help="a two-step model: coarse on whole volumes (OUTPUT/stage1), fine on crops (OUTPUT/stage2), "
        "chained by OUTPUT/spec.json",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--progress", choices=("text", "jsonl"), default="text", help="jsonl: one JSON line per epoch")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from lesionseg.training import train

    if args.threads:
        torch.set_num_threads(args.threads)

    def report(event: dict) -> None:
        if args.progress == "jsonl":
            print(json.dumps(event, sort_keys=True), flush=True)
        else:
            dice = f" dice {event['dice_mean']:.4f}" if event.get("dice_mean") is not None else ""
            logging.info("epoch %d: loss %.4f%s (%.1f s)", event["epoch"], event["loss"], dice, event["time_s"])

    if args.config is None and not args.resume:
        args.config = "tiny"
    try:
        if args.cascade:
            from lesionseg.training.cascade import train_cascade

            stages = train_cascade(
                args.dataset, args.config, args.output, args.epochs, args.resume, args.device, report
            )
            if not stages:
                print(f"both stages in {args.output} had finished; nothing to resume")
                return 0
            result = stages[-1]
        else:
            result = train(args.dataset, args.config, args.output, args.epochs, args.resume, args.device, report)
    except Exception as error:
        if args.progress == "jsonl":
            print(json.dumps({"event": "error", "type": type(error).__name__, "text": str(error)}), flush=True)
        raise
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun only rank 0 reports; it wrote the model
    # A cascade's model is the top folder, whose spec chains the two stage folders.
    model_folder = Path(args.output) if args.cascade else result.output
    summary = {
        "event": "result",
        "output": str(model_folder),
        "last_epoch": result.last_epoch,
        "best_epoch": result.best_epoch,
        "best_dice": result.best_dice,
        "stopped_early": result.stopped_early,
    }
    if args.progress == "jsonl":
        print(json.dumps(summary), flush=True)
    else:
        print(
            f"model written to {model_folder} (epoch {result.last_epoch}, best Dice {result.best_dice})",
            file=sys.stdout,
        )
    return 0
