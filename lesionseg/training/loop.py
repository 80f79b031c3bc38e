"""The training loop: cached data, checkpoints every epoch, resume, validation, early stopping, DDP."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lesionseg.io.atomic import write_bytes_atomic, write_json_atomic
from lesionseg.jobs.protocol import epoch_progress
from lesionseg.training.checkpoint import BEST, LATEST, load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from lesionseg.training.config import load_config
from lesionseg.training.data import dataset_datalists, deterministic_transforms, random_transforms

log = logging.getLogger(__name__)
METRICS = "metrics.jsonl"
SPLIT_RECORD = "split.json"  # the run's train/validation cases and their file hashes, as its checkpoints keep them
CURVE = "learning_curve.png"
TENSORBOARD_PIN = "tensorboard==2.21.0"  # the version requirements/test.txt pins
# Drawing the curve costs about 0.4 s of matplotlib, as much as a whole small epoch: redraw it on a
# validated epoch only when the last drawing took at most this share of the time since, and on any
# other epoch only every CURVE_EVERY_S; the run's last epoch is always drawn.
CURVE_SHARE = 0.1
CURVE_EVERY_S = 30.0
Progress = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    output: Path
    epochs_run: int
    last_epoch: int
    best_epoch: int | None
    best_dice: float | None
    stopped_early: str | None
    history: list[dict[str, Any]]


def resolve_device(name: str, local_rank: int = 0) -> Any:
    import torch

    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available here (torch {torch.__version__}); use --device cpu")
    return device


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) when run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _optimizer(config: dict[str, Any], parameters: Any) -> Any:
    import torch

    opt = config["optimizer"]
    name, lr, wd = opt["name"], opt["lr"], opt["weight_decay"]
    if name == "Adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=wd)
    if name == "AdamW":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=wd)
    if name == "SGD":
        return torch.optim.SGD(
            parameters, lr=lr, momentum=opt["momentum"], weight_decay=wd, nesterov=opt["momentum"] > 0
        )
    from monai.optimizers import Novograd

    return Novograd(parameters, lr=lr, weight_decay=wd)


def _scheduler(config: dict[str, Any], optimizer: Any, epochs: int) -> Any:
    import torch

    sched = config["schedule"]
    name = sched["name"]
    if name == "cosine_warm_restarts":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=int(sched["restart_epochs"]), T_mult=int(sched["restart_mult"]), eta_min=sched["min_lr"]
        )
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(sched["step_epochs"]), gamma=sched["gamma"])
    if name == "poly":
        return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=max(1, epochs), power=sched["power"])
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def _loss(config: dict[str, Any]) -> Any:
    from monai import losses

    spec = config["loss"]
    common = {"to_onehot_y": True, "softmax": True, "include_background": spec["include_background"]}
    if spec["name"] == "Dice":
        return losses.DiceLoss(**common)
    if spec["name"] == "DiceFocal":
        return losses.DiceFocalLoss(**common, gamma=spec["focal_gamma"])
    return losses.DiceCELoss(**common)


def _state_digest(state: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _write_metrics(output: Path, history: list[dict[str, Any]]) -> None:
    # Rewritten whole from the checkpoint's history, so after a kill and resume it holds each
    # epoch exactly once.
    text = "".join(json.dumps(entry, sort_keys=True) + "\n" for entry in history)
    write_bytes_atomic(output / METRICS, text.encode("utf-8"))


def _write_curve(output: Path, history: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from lesionseg.io.atomic import atomic_path

    epochs = [h["epoch"] for h in history]
    fig, loss_axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    loss_axis.plot(epochs, [h["loss"] for h in history], color="tab:red", label="training loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("loss")
    validated = [h for h in history if h.get("dice_mean") is not None]
    if validated:
        dice_axis = loss_axis.twinx()
        dice_axis.plot(
            [h["epoch"] for h in validated],
            [h["dice_mean"] for h in validated],
            "o-",
            color="tab:blue",
            label="validation Dice",
        )
        dice_axis.set_ylabel("validation Dice")
        dice_axis.set_ylim(0, 1)
    fig.legend(loc="upper center", ncol=2, fontsize=8)
    fig.tight_layout()
    with atomic_path(output / CURVE) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


@dataclass
class _CurveSchedule:
    """When to redraw ``learning_curve.png`` (see CURVE_SHARE)."""

    output: Path
    drawn_at: float = field(default_factory=time.monotonic)
    cost_s: float = 0.0
    epoch: int = 0  # the last epoch the PNG shows

    def due(self, validated: bool) -> bool:
        since = time.monotonic() - self.drawn_at
        return since >= CURVE_EVERY_S or (validated and since * CURVE_SHARE >= self.cost_s)

    def draw(self, history: list[dict[str, Any]]) -> None:
        began = time.monotonic()
        _write_curve(self.output, history)
        self.drawn_at = time.monotonic()
        self.cost_s = self.drawn_at - began
        self.epoch = history[-1]["epoch"]


def _validate(model: Any, loader: Any, config: dict[str, Any], device: Any, labels: dict[int, str], amp: bool) -> dict:
    """Sliding-window Dice per label on whole validation volumes (preprocessed space).

    An empty ground truth scores 1 when the prediction is empty too and 0 otherwise (MONAI's
    ``ignore_empty=False``), so lesion-free cases count and false positives on them are punished.
    """
    import torch
    from monai.inferers import sliding_window_inference
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot

    num_classes = max(labels) + 1
    # compute_dice, not DiceMetric: DiceMetric.aggregate gathers across ranks, and only rank 0 validates.
    scores = []
    overlap = torch.zeros(num_classes - 1)
    sizes = torch.zeros(num_classes - 1)
    model.eval()
    with torch.no_grad(), torch.autocast(device_type=device.type, enabled=amp):
        for batch in loader:
            image, label = batch["image"].to(device), batch["label"].to(device)
            logits = sliding_window_inference(
                image,
                config["augmentation"]["patch_size"],
                config["validation"]["sw_batch_size"],
                model,
                overlap=config["validation"]["overlap"],
            )
            prediction = one_hot(torch.argmax(logits, dim=1, keepdim=True), num_classes)
            truth = one_hot(label.long(), num_classes)
            spatial = tuple(range(2, prediction.ndim))
            overlap += (prediction * truth).sum(dim=(0, *spatial))[1:].float().cpu()
            sizes += (prediction.sum(dim=(0, *spatial)) + truth.sum(dim=(0, *spatial)))[1:].float().cpu()
            scores.append(compute_dice(prediction, truth, include_background=False, ignore_empty=False).float().cpu())
    per_class = torch.cat(scores).mean(dim=0).tolist()
    model.train()
    # Pooled over all validation voxels; both empty everywhere counts as a perfect 1.
    pooled_per_class = torch.where(sizes > 0, 2 * overlap / sizes.clamp(min=1), torch.ones_like(sizes)).tolist()
    names = {value: labels.get(value, f"label_{value}") for value in sorted(labels) if value}
    dice = {name: round(float(per_class[value - 1]), 5) for value, name in names.items()}
    pooled = {name: round(float(pooled_per_class[value - 1]), 5) for value, name in names.items()}
    return {
        "dice": dice,
        "dice_mean": round(float(np.mean(list(dice.values()))), 5),
        "dice_pooled": pooled,
        "dice_pooled_mean": round(float(np.mean(list(pooled.values()))), 5),
    }


def selection_score(config: dict[str, Any], entry: dict[str, Any]) -> float | None:
    """The validation figure that picks the best checkpoint and drives early stopping."""
    key = "dice_pooled_mean" if config["validation"]["select"] == "pooled" else "dice_mean"
    return entry.get(key)


def train(
    dataset_dir: str | Path,
    config_source: str | Path | dict[str, Any] | None,
    output: str | Path,
    epochs: int | None = None,
    resume: bool = False,
    device: str = "auto",
    progress: Progress | None = None,
    tensorboard: bool | None = None,
    new_split: bool = False,
    kept_split: dict[str, Any] | None = None,
) -> TrainResult:
    """Train a model on a dataset folder and write it as a registry model folder in ``output``.

    ``tensorboard`` overrides the config's ``training.tensorboard`` (also on resume) when given.  A resumed
    run keeps the train/validation cases it started with, and refuses when the dataset no longer holds
    them unchanged, unless ``new_split`` asks for a fresh split.  ``kept_split`` (a ``split.json``) makes
    a new run use the cases of another (a cascade's second stage those of its first).
    """
    import torch
    import torch.distributed as dist
    from monai.data import CacheDataset, ThreadDataLoader, set_track_meta
    from monai.transforms import Compose, Randomizable
    from monai.utils import set_determinism

    output = Path(output)
    latest = output / LATEST
    rank, world, local_rank = _distributed()
    if resume and not latest.is_file():
        raise ValueError(f"--resume: {output} holds no {LATEST}; start without --resume (or give the right folder)")
    if not resume and latest.is_file():
        raise ValueError(
            f"{output} already holds a training checkpoint; add --resume to continue it, or choose a new --output"
        )
    checkpoint = load_checkpoint(latest) if resume else None
    if checkpoint is not None:
        # The run continues with the config it started with; only the epoch count may change.
        config = load_config(json.loads(checkpoint["config"]))
        if config_source is not None and load_config(config_source) != config:
            log.warning("resuming with the config stored in the checkpoint; the --config given differs and is ignored")
    else:
        config = load_config(config_source)
    if epochs is not None:
        if epochs < 1:
            raise ValueError(f"--epochs {epochs}: give at least 1")
        config["training"]["epochs"] = int(epochs)
    if tensorboard is not None:
        config["training"]["tensorboard"] = bool(tensorboard)
    # Checked before any data is cached, on every rank, so a missing package fails in seconds.
    summary_writer = tensorboard_writer_class() if config["training"]["tensorboard"] else None
    total_epochs = config["training"]["epochs"]
    if checkpoint is not None and int(checkpoint["epoch"]) >= total_epochs:
        raise ValueError(
            f"the run in {output} already finished epoch {int(checkpoint['epoch'])} of {total_epochs}; "
            f"give --epochs above {int(checkpoint['epoch'])} to train on"
        )

    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device != "cpu" and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    torch_device = resolve_device(device, local_rank)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    amp = bool(config["training"]["amp"]) and torch_device.type == "cuda"
    if torch_device.type == "cpu":
        # Small gradients become subnormal floats in the backward pass, and x86 CPUs handle those in
        # microcode: a UNet step measured 30x slower (7 s vs 0.23 s) until they are flushed to zero.
        torch.set_flush_denormal(True)
    seed = int(config["training"]["seed"]) + rank
    if config["training"]["deterministic"]:
        set_determinism(seed=seed)  # also turns cuDNN's autotuner off and its deterministic kernels on
    else:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        # Seeded but fast: cuDNN may pick the quickest convolution algorithms for the fixed patch size.
        torch.backends.cudnn.benchmark = torch_device.type == "cuda"

    kept = json.loads(checkpoint["split"]) if checkpoint is not None and "split" in checkpoint else kept_split
    data = dataset_datalists(dataset_dir, config, None if new_split else kept)
    labels = data["labels"]
    out_channels = max(labels) + 1
    if checkpoint is not None and (kept is None or new_split):
        if kept is None and checkpoint["dataset_manifest_sha256"] != data["manifest_sha256"]:
            # A run from before splits were recorded: its split cannot be checked, only the manifest.
            log.warning("the dataset changed since this run started (its manifest hash differs); resuming on new data")
        if new_split:
            log.warning(
                "resuming on a new split (%d training, %d validation cases); validation scores from before are not "
                "comparable with those that follow",
                len(data["train_ids"]),
                len(data["validation_ids"]),
            )
    output.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        write_json_atomic(output / SPLIT_RECORD, data["split_record"])

    train_items = data["train"]
    if world > 1:
        from monai.data import partition_dataset

        train_items = partition_dataset(train_items, num_partitions=world, shuffle=False, even_divisible=True)[rank]
    random_chain = random_transforms(config, torch_device)
    random_parts = _random_sources(random_chain, Randomizable)
    train_ds = CacheDataset(
        train_items,
        Compose(deterministic_transforms(config) + random_chain),
        cache_rate=config["training"]["cache_rate"],
        num_workers=1,
        progress=False,
    )
    val_ds = (
        CacheDataset(
            data["validation"], Compose(deterministic_transforms(config)), cache_rate=1.0, num_workers=1, progress=False
        )
        if rank == 0 and data["validation"]
        else None
    )
    train_loader = ThreadDataLoader(train_ds, batch_size=config["training"]["batch_size"], shuffle=True, num_workers=0)
    val_loader = ThreadDataLoader(val_ds, batch_size=1, num_workers=0) if val_ds is not None else None

    from lesionseg.training.networks import build_network

    net_name, net_params, model = build_network(config, out_channels)
    model = model.to(torch_device)
    optimizer = _optimizer(config, model.parameters())
    scheduler = _scheduler(config, optimizer, total_epochs)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loss_function = _loss(config)
    history: list[dict[str, Any]] = []
    start_epoch = 1
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        history = [json.loads(line) for line in checkpoint["history"]]
        start_epoch = int(checkpoint["epoch"]) + 1
        restore_rng_state(checkpoint["rng"], random_parts)
        if rank == 0:
            _write_metrics(output, history)
    trained = model
    if world > 1:
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[torch_device.index] if torch_device.type == "cuda" else None
        )
    writer = summary_writer(log_dir=str(output / "tensorboard")) if summary_writer and rank == 0 else None
    curve = _CurveSchedule(output)

    def best_of(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
        validated = [h for h in entries if selection_score(config, h) is not None]
        return max(validated, key=lambda h: (selection_score(config, h), -h["epoch"])) if validated else None

    stopped: str | None = None
    epochs_run = 0
    iterations_cap = int(config["training"]["iterations_per_epoch"])
    # Cached tensors carry no metadata and the random part needs none; volumes left out of the cache
    # (cache_rate < 1) are loaded per iteration, and their orientation and spacing steps need it.
    set_track_meta(config["training"]["cache_rate"] < 1.0)
    try:
        for epoch in range(start_epoch, total_epochs + 1):
            started = time.perf_counter()
            trained.train()
            loss_sum, steps, samples = 0.0, 0, 0
            for batch in train_loader:
                image = batch["image"].to(torch_device, non_blocking=True)
                label = batch["label"].to(torch_device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device_type=torch_device.type, enabled=amp):
                    loss = loss_function(trained(image), label)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                loss_sum += float(loss.detach())
                steps += 1
                samples += int(image.shape[0])
                if iterations_cap and steps >= iterations_cap:
                    break
            if steps == 0:
                raise RuntimeError(
                    "the training loader gave no batches (a transform failed while loading; see the traceback above)"
                )
            train_seconds = time.perf_counter() - started
            lr = float(optimizer.param_groups[0]["lr"])
            scheduler.step()
            entry: dict[str, Any] = {
                "epoch": epoch,
                "loss": round(loss_sum / max(steps, 1), 6),
                "lr": lr,
                "iterations": steps,
                "samples": samples,
                "train_s": round(train_seconds, 3),
            }
            validate = val_loader is not None and (
                epoch % config["validation"]["interval"] == 0 or epoch == total_epochs
            )
            if validate:
                # Iterating a loader draws from torch's generator; fork it so that when validation runs
                # does not change the training that follows (and resumed runs match uninterrupted ones).
                with torch.random.fork_rng(devices=[torch_device] if torch_device.type == "cuda" else []):
                    entry.update(_validate(model, val_loader, config, torch_device, labels, amp))
            entry["time_s"] = round(time.perf_counter() - started, 3)
            entry["elapsed_s"] = round(entry["time_s"] + (history[-1]["elapsed_s"] if history else 0.0), 3)
            history.append(entry)
            epochs_run += 1
            best = best_of(history)
            if rank == 0:
                state = {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": rng_state(random_parts),
                    "history": [json.dumps(h, sort_keys=True) for h in history],
                    "config": json.dumps(config),
                    "dataset_manifest_sha256": data["manifest_sha256"],
                    # The cases (and their file hashes) this run trains and validates on; a resume keeps them.
                    "split": json.dumps(data["split_record"]),
                }
                if validate and best is not None and best["epoch"] == epoch:
                    save_checkpoint(output / BEST, state)
                save_checkpoint(latest, state)
                _write_metrics(output, history)
                if curve.due(validate):
                    curve.draw(history)
                if writer is not None:
                    _log_scalars(writer, entry)
            if progress is not None and rank == 0:
                progress(epoch_progress(epoch, total_epochs, entry))
            stopped = _should_stop(config, history, best, validate)
            if world > 1:
                flag = torch.tensor([1 if stopped else 0])
                dist.broadcast(flag, 0)
                stopped = stopped or ("early stop on rank 0" if int(flag) else None)
            if stopped:
                log.info("stopping after epoch %d: %s", epoch, stopped)
                break
        if world > 1:
            # Parameters agree through DDP's all-reduce; batch-norm statistics are rank 0's, as exported.
            for buffer in model.buffers():
                dist.broadcast(buffer.data, 0)
        digest = _state_digest(model.state_dict())
        digests = [digest]
        if world > 1:
            digests = [None] * world
            dist.all_gather_object(digests, digest)
        best = best_of(history)
        if rank == 0:
            from lesionseg.training.export import write_model_folder

            if history and curve.epoch != history[-1]["epoch"]:
                curve.draw(history)

            weights = (
                load_checkpoint(output / BEST)["model"]
                if best is not None and (output / BEST).is_file()
                else (model.state_dict())
            )
            write_model_folder(
                output,
                config,
                net_name,
                net_params,
                weights,
                labels,
                data,
                history,
                best,
                {"world_size": world, "rank_weight_sha256": digests, "device": str(torch_device), "amp": amp},
            )
    finally:
        if rank == 0 and history and curve.epoch != history[-1]["epoch"]:
            # Interrupted (cancelled, out of budget, failed): still leave a curve of every finished epoch,
            # without hiding the exception that got us here.
            try:
                curve.draw(history)
            except Exception:
                log.warning("could not draw %s", output / CURVE, exc_info=True)
        set_track_meta(True)
        if writer is not None:
            writer.close()
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    best = best_of(history)
    return TrainResult(
        output,
        epochs_run,
        history[-1]["epoch"] if history else 0,
        best["epoch"] if best else None,
        best["dice_mean"] if best else None,
        stopped,
        history,
    )


def _random_sources(transforms: list, randomizable: type) -> list:
    """Every object with its own random state inside ``transforms``, in a fixed order.

    MONAI's dictionary transforms keep a second generator in the array transform they wrap
    (``RandRotated.rand_rotate``, ``RandCropByPosNegLabeld.cropper``): an exact resume must restore both.
    """
    found: list = []
    seen: set[int] = set()

    def visit(obj: object, depth: int) -> None:
        if id(obj) in seen or depth > 3:
            return
        seen.add(id(obj))
        if isinstance(obj, randomizable):
            found.append(obj)
        for name in sorted(getattr(obj, "__dict__", {})):
            value = obj.__dict__[name]
            if isinstance(value, randomizable) or hasattr(value, "R"):
                visit(value, depth + 1)

    for transform in transforms:
        visit(transform, 0)
    return found


def _should_stop(
    config: dict[str, Any], history: list[dict[str, Any]], best: dict | None, validated: bool
) -> str | None:
    if not validated or best is None:
        return None
    current = history[-1]
    target = config["validation"]["stop_at_dice"]
    score = selection_score(config, current)
    if target and score is not None and score >= target:
        return f"validation Dice {score:.4f} reached the target {target}"
    patience = config["validation"]["early_stopping_patience"]
    validations_since = sum(1 for h in history if h["epoch"] > best["epoch"] and selection_score(config, h) is not None)
    if patience and validations_since >= patience:
        return f"no improvement in {patience} validations since epoch {best['epoch']}"
    return None


def tensorboard_writer_class(module: str = "torch.utils.tensorboard") -> Any:
    """torch's ``SummaryWriter``; a ValueError naming the pinned install when its package is missing."""
    import importlib

    try:
        return importlib.import_module(module).SummaryWriter
    except ImportError as error:
        raise ValueError(
            f"training.tensorboard (--tensorboard) needs the tensorboard package ({error}); "
            f"install it with: pip install {TENSORBOARD_PIN}, or train without --tensorboard"
        ) from None


def _log_scalars(writer: Any, entry: dict[str, Any]) -> None:
    """One epoch's metrics.jsonl figures as TensorBoard scalars, stepped by epoch."""
    epoch = entry["epoch"]
    writer.add_scalar("loss", entry["loss"], epoch)
    writer.add_scalar("lr", entry["lr"], epoch)
    if entry.get("dice_mean") is not None:
        writer.add_scalar("dice_mean", entry["dice_mean"], epoch)
        for name, value in entry["dice"].items():
            writer.add_scalar(f"dice/{name}", value, epoch)
    writer.flush()  # a killed run keeps what it logged
