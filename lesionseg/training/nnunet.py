"""Training with nnU-Net v2 (``lesionseg train --engine nnunet``): export, plan and preprocess, train, import.

A work folder holds nnU-Net's three folders (``raw``, ``preprocessed``, ``results``); the curated dataset is exported
into ``raw`` as ``Dataset501_<name>``, planned and preprocessed with nnU-Net's own functions, trained, and the
result folder imported into the models folder with :func:`lesionseg.models.nnunet_import.import_nnunet_model`.

Why not ``nnUNetv2_train`` itself: its trainer lookup (``recursive_find_trainer_class_by_name``) imports every module
under ``nnunetv2/training/nnUNetTrainer`` before it reads ``nnUNet_extTrainer``. The Primus trainers there import
timm, and timm imports torchvision, which is not installed here (PyPI's build does not load beside the CPU torch; see
requirements/nnunet.txt). So the class is looked up here: LesionSeg's own trainers by import, any other name by
nnU-Net's lookup (which finds ``nnUNetTrainer`` in its first module, before the Primus package). Everything after the
lookup is the single-device branch of nnU-Net's ``run_training``: the same trainer construction, nnU-Net's
``maybe_load_checkpoint`` for ``--c``, ``run_training()`` and ``perform_actual_validation()``.

Two things are done better than nnU-Net does them: ``--c`` with no checkpoint is refused (nnU-Net warns and starts a
new training), and checkpoints are written to a temporary file and moved into place (nnU-Net writes
``checkpoint_latest.pth`` in place, so a cancel mid-write would leave it truncated).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lesionseg.errors import UserError
from lesionseg.io.atomic import write_json_atomic
from lesionseg.models.nnunet import PREFERRED_CONFIGURATIONS as CONFIGURATIONS

DATASET_ID = 501  # 500 and up are nnU-Net's ids for one's own datasets; the work folder holds only this one
PLANS = "nnUNetPlans"
PLAN_RECORD = "lesionseg-plan.json"  # beside nnU-Net's plans: the GPU memory target they were made for
CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")  # maybe_load_checkpoint's order
# The configuration whose preprocessed data a configuration trains on (the cascade's second stage uses full res).
_PREPROCESSED_AS = {"3d_cascade_fullres": "3d_fullres"}


@dataclass(frozen=True)
class NnunetTrainingResult:
    model_folder: Path  # the imported LesionSeg model
    results_folder: Path  # nnU-Net's trained configuration folder in the work folder
    last_epoch: int
    best_dice: float | None


def environment(work: str | Path, processes: int = 1) -> dict[str, str]:
    """nnU-Net's settings for a run in ``work``: its three folders, and few processes (nnU-Net's defaults are
    sized for a GPU server: 8 preprocessing and 12 augmentation workers)."""
    work = Path(work).resolve()
    return {
        "nnUNet_raw": str(work / "raw"),
        "nnUNet_preprocessed": str(work / "preprocessed"),
        "nnUNet_results": str(work / "results"),
        "nnUNet_n_proc_DA": str(max(1, processes)),  # augmentation workers; planning needs at least 1
        "nnUNet_def_n_proc": str(max(1, processes)),
        "nnUNet_compile": "false",  # torch.compile costs minutes on a CPU and gains nothing for short runs
    }


def fold_folders(work: str | Path, configuration: str, trainer: str, fold: str) -> list[Path]:
    """The results fold folders this training writes (none before it ran)."""
    results = Path(work) / "results"
    return sorted(results.glob(f"Dataset{DATASET_ID:03d}_*/{trainer}__{PLANS}__{configuration}/fold_{fold}"))


def require_checkpoint(work: str | Path, configuration: str, trainer: str, fold: str) -> Path:
    """The checkpoint ``--resume`` continues from; refused when there is none (nnU-Net would start afresh)."""
    for folder in fold_folders(work, configuration, trainer, fold):
        for name in CHECKPOINTS:
            if (folder / name).is_file():
                return folder / name
    raise UserError(
        f"there is no nnU-Net checkpoint of {trainer} {configuration} fold {fold} in {work} to resume "
        "(nnU-Net would silently start a new training); train without --resume first"
    )


def check_fold(fold: str) -> str:
    if fold == "all" or fold.isdigit():
        return fold
    raise UserError(f"--fold {fold!r}: give a fold number (0-4 for nnU-Net's 5-fold split) or 'all'")


def _exported_folder(work: Path) -> Path | None:
    found = sorted((work / "raw").glob(f"Dataset{DATASET_ID:03d}_*"))
    return found[0] if found else None


def prepare(
    dataset: str | Path,
    work: Path,
    configuration: str,
    resume: bool,
    report: Callable[[str], None],
    plan_gpu_memory_gb: float | None = None,
) -> Path:
    """Export, plan and preprocess as far as not done yet; returns the preprocessed dataset folder.

    ``plan_gpu_memory_gb`` is the GPU memory nnU-Net's planner sizes the patches for (its ``-gpu_memory_target``;
    None: its default, 8 GB). A smaller target gives smaller patches, and a ``3d_lowres`` stage (with its cascade)
    for images that are large against them.

    The export records the dataset manifest's hash: a changed dataset is exported and planned afresh for a new
    training, and refused for a resumed one (its split and normalisation would no longer be those it started with).
    """
    import shutil

    from lesionseg.datasets import Dataset, export_nnunet

    manifest = Dataset(dataset).manifest_sha256()
    exported = _exported_folder(work)
    if exported is not None:
        recorded = json.loads((exported / "dataset.json").read_text(encoding="utf-8")).get("lesionseg_manifest_sha256")
        if recorded != manifest:
            if resume:
                raise UserError(
                    f"the dataset {dataset} changed since this nnU-Net training started in {work}; "
                    "train again without --resume (in a new --output) to use the cases as they are now"
                )
            report("the dataset changed since the last export: exporting and planning again")
            for folder in (work / "raw", work / "preprocessed"):
                shutil.rmtree(folder, ignore_errors=True)
            exported = None
    if exported is None:
        report("exporting the dataset to nnU-Net's raw layout")
        exported = export_nnunet(dataset, work / "raw", DATASET_ID)
    preprocessed = work / "preprocessed" / exported.name
    plans_file = preprocessed / f"{PLANS}.json"
    from nnunetv2.experiment_planning import plan_and_preprocess_api as api

    planned_for = preprocessed / PLAN_RECORD
    if not plans_file.is_file():
        report("nnU-Net: extracting the dataset fingerprint and planning")
        api.extract_fingerprints([DATASET_ID], num_processes=1, check_dataset_integrity=True)
        api.plan_experiments([DATASET_ID], gpu_memory_target_in_gb=plan_gpu_memory_gb)
        write_json_atomic(planned_for, {"gpu_memory_target_gb": plan_gpu_memory_gb})
    elif plan_gpu_memory_gb is not None:
        recorded = json.loads(planned_for.read_text(encoding="utf-8")) if planned_for.is_file() else {}
        if recorded.get("gpu_memory_target_gb") != plan_gpu_memory_gb:
            raise UserError(
                f"{work} was planned for {recorded.get('gpu_memory_target_gb') or 'the default 8'} GB of GPU memory, "
                f"not --plan-gpu-memory {plan_gpu_memory_gb:g}; leave the option out to train with those plans, or "
                "choose a new --output to plan again"
            )
    plans = json.loads(plans_file.read_text(encoding="utf-8"))
    if configuration not in plans["configurations"]:
        raise UserError(
            f"nnU-Net planned no {configuration} for this dataset (it has {', '.join(sorted(plans['configurations']))}"
            "; 3d_lowres and the cascade are planned only for images much larger than the patch size)"
        )
    sources = [_PREPROCESSED_AS.get(configuration, configuration)]
    if plans["configurations"][sources[0]].get("next_stage"):
        # 3d_lowres predicts every validation case for its cascade when it ends, on 3d_fullres's preprocessed data.
        sources.append("3d_fullres")
    for source in sources:
        identifier = plans["configurations"][source].get("data_identifier", f"{PLANS}_{source}")
        if not (preprocessed / identifier).is_dir():
            report(f"nnU-Net: preprocessing {source}")
            api.preprocess([DATASET_ID], PLANS, [source], [1], show_progress_bar=False)
    if (exported / "splits_final.json").is_file() and not (preprocessed / "splits_final.json").is_file():
        # The dataset's own train/validation split (fold 0), instead of nnU-Net's random 5-fold one.
        shutil.copyfile(exported / "splits_final.json", preprocessed / "splits_final.json")
    return preprocessed


def trainer_class(name: str) -> type:
    """The nnU-Net trainer class called ``name`` (see the module docstring for why not nnU-Net's lookup alone)."""
    from lesionseg.training.nnunet_trainers import TRAINER_MODULE, TRAINERS

    if name in TRAINERS:
        import importlib

        return getattr(importlib.import_module(TRAINER_MODULE), name)
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        return recursive_find_trainer_class_by_name(name)
    except ModuleNotFoundError as error:
        raise UserError(
            f"nnU-Net's lookup of trainer {name!r} imports every trainer module, and one needs {error.name}, which is "
            f"not installed (see requirements/nnunet.txt); use nnUNetTrainer or one of {', '.join(TRAINERS)}"
        ) from error
    except RuntimeError as error:
        raise UserError(f"no nnU-Net trainer class {name!r}; LesionSeg provides {', '.join(TRAINERS)}") from error


def label_names(dataset_json: dict[str, Any]) -> list[str]:
    """The foreground label names of an nnU-Net dataset.json, in value order (the order of its per-class Dice)."""
    return [name for name, _ in sorted(dataset_json["labels"].items(), key=lambda item: item[1])][1:]


def epoch_figures(
    log: Any, epoch: int, names: list[str], iterations: int, seconds_before: float = 0.0
) -> dict[str, Any]:
    """The job event figures of ``epoch`` (1-based), just ended, read from nnU-Net's training log ``log`` (its
    ``MetaLogger``): training and validation loss, pseudo Dice per label and its mean and moving average."""

    def last(key: str) -> Any:
        return log.get_value(key, step=-1)

    seconds = float(last("epoch_end_timestamps") - last("epoch_start_timestamps"))
    dice = [float(d) for d in last("dice_per_class_or_region")]
    return {
        "epoch": epoch,
        "loss": float(last("train_losses")),
        "val_loss": float(last("val_losses")),
        "lr": float(last("lrs")),
        "iterations": iterations,
        "time_s": round(seconds, 3),
        "elapsed_s": round(seconds_before + seconds, 3),
        "dice": dict(zip(names, dice, strict=True)),
        "dice_mean": float(last("mean_fg_dice")),
        "dice_ema": float(last("ema_fg_dice")),
    }


def _watch(trainer: Any, on_epoch: Callable[[dict[str, Any]], None]) -> None:
    """Hook the trainer instance: an event after each epoch, and checkpoints written atomically."""
    from lesionseg.jobs import protocol

    end_epoch, save = trainer.on_epoch_end, trainer.save_checkpoint
    elapsed = [0.0]

    def on_epoch_end() -> None:
        end_epoch()  # logs the epoch's end time, saves checkpoints and advances current_epoch past this epoch
        names = label_names(trainer.dataset_json)
        figures = epoch_figures(trainer.logger, trainer.current_epoch, names, trainer.num_iterations_per_epoch,
                                elapsed[0])  # fmt: skip
        elapsed[0] = figures["elapsed_s"]
        on_epoch(protocol.epoch_progress(figures["epoch"], trainer.num_epochs, figures))

    def save_checkpoint(filename: str) -> None:
        partial = f"{filename}.part"
        save(partial)
        if os.path.isfile(partial):  # absent when nnU-Net's checkpointing is disabled
            os.replace(partial, filename)

    trainer.on_epoch_end = on_epoch_end
    trainer.save_checkpoint = save_checkpoint


NNUNET_FOLDS = 5  # nnU-Net's own split when a dataset has none: 5 folds, each case validated once


def _check_folds(dataset: str | Path, fold: str) -> None:
    """Refuse, before any work, a fold that the run could not have: nnU-Net would fail deep in its split code."""
    from lesionseg.datasets import Dataset

    data = Dataset(dataset)
    if fold == "all":
        return
    if "splits" in data.description():
        if fold != "0":
            raise UserError(
                f"--fold {fold}: {dataset} has its own train/validation split, which is nnU-Net's fold 0; "
                "give --fold 0 (or all), or remove the split to train on nnU-Net's 5 folds"
            )
        return
    cases = len(data.active_cases())
    if cases < NNUNET_FOLDS:
        raise UserError(
            f"{dataset} has {cases} case(s) and no split, and nnU-Net's 5-fold split needs at least {NNUNET_FOLDS}: "
            f"store a split first (lesionseg dataset split {dataset}; it becomes fold 0) or train on every case "
            "with --fold all"
        )


def train_nnunet(
    dataset: str | Path,
    configuration: str,
    work: str | Path,
    models_dir: str | Path,
    model_id: str,
    fold: str = "0",
    trainer: str = "nnUNetTrainer",
    resume: bool = False,
    overwrite: bool = False,
    device: str = "auto",
    processes: int = 1,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    report: Callable[[str], None] = print,
    plan_gpu_memory_gb: float | None = None,
) -> NnunetTrainingResult:
    """Train ``configuration`` of ``dataset`` with nnU-Net in the work folder ``work``, and import the result into
    ``models_dir`` as ``model_id``; ``processes`` is the number of worker processes nnU-Net may start."""
    from lesionseg.models.nnunet_import import import_nnunet_model

    if configuration not in CONFIGURATIONS:
        raise UserError(f"--configuration {configuration!r}: nnU-Net trains {', '.join(CONFIGURATIONS)}")
    fold = check_fold(str(fold))
    work = Path(work)
    target = Path(models_dir).expanduser() / model_id
    if target.exists() and not (overwrite or resume):
        raise UserError(f"the models folder already holds {target}; give another model id, --resume, or --overwrite")
    if resume:
        require_checkpoint(work, configuration, trainer, fold)
    elif any(any((f / n).is_file() for n in CHECKPOINTS) for f in fold_folders(work, configuration, trainer, fold)):
        raise UserError(
            f"{work} already holds this nnU-Net training ({trainer} {configuration} fold {fold}); add --resume to "
            "continue it, or choose a new --output"
        )
    first_stage = fold_folders(work, "3d_lowres", trainer, fold)
    if configuration == "3d_cascade_fullres" and not any((f / "checkpoint_final.pth").is_file() for f in first_stage):
        raise UserError(
            "3d_cascade_fullres trains on the predictions of 3d_lowres: train --configuration 3d_lowres in the same "
            f"--output with the same --trainer and --fold ({trainer}, {fold}) first"
        )
    _check_folds(dataset, fold)
    # nnunetv2 (2.8) reads its folders from the environment whenever it joins a path, so setting them here holds
    # for this process and for the worker processes nnU-Net starts.
    os.environ.update(environment(work, processes))
    cls = trainer_class(trainer)
    if plan_gpu_memory_gb is not None and not plan_gpu_memory_gb > 0:
        raise UserError(f"--plan-gpu-memory {plan_gpu_memory_gb:g}: give the GPU memory in GB, more than 0")
    preprocessed = prepare(dataset, work, configuration, resume, report, plan_gpu_memory_gb)
    import torch
    from nnunetv2.run.run_training import maybe_load_checkpoint

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    plans = json.loads((preprocessed / f"{PLANS}.json").read_text(encoding="utf-8"))
    plans["continue_training"] = resume
    dataset_json = json.loads((preprocessed / "dataset.json").read_text(encoding="utf-8"))
    fold_value: int | str = int(fold) if fold.isdigit() else fold
    nnunet_trainer = cls(
        plans=plans,
        configuration=configuration,
        fold=fold_value,
        dataset_json=dataset_json,
        device=torch.device(device),
    )
    _watch(nnunet_trainer, on_epoch or (lambda event: None))
    report(f"nnU-Net: training {trainer} {configuration} fold {fold} on {device}")
    started = time.monotonic()
    maybe_load_checkpoint(nnunet_trainer, resume, False)
    nnunet_trainer.run_training()
    nnunet_trainer.perform_actual_validation(False)
    report(f"nnU-Net: training and validation took {time.monotonic() - started:.0f} s")
    results_folder = Path(nnunet_trainer.output_folder_base)
    from lesionseg.datasets import Dataset

    model_folder = import_nnunet_model(
        results_folder.parent, models_dir, model_id, Dataset(dataset).lesion_labels(), "as stored", overwrite=True
    )
    best = nnunet_trainer._best_ema
    return NnunetTrainingResult(
        model_folder, results_folder, nnunet_trainer.current_epoch, None if best is None else float(best)
    )
