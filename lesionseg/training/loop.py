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
        loss = losses.DiceLoss(**common)
    elif spec["name"] == "DiceFocal":
        loss = losses.DiceFocalLoss(**common, gamma=spec["focal_gamma"])
    else:
        loss = losses.DiceCELoss(**common)
    return _DeepSupervised(loss) if config["network"]["deep_supervision"] else loss


class _DeepSupervised:
    """A loss over a deeply supervised DynUNet's training output ``[batch, heads, classes, ...]`` (full resolution
    first), weighted by MONAI's DeepSupervisionLoss; a plain output (evaluation) gets the loss alone."""

    def __init__(self, loss: Any):
        from monai.losses import DeepSupervisionLoss

        self.loss = DeepSupervisionLoss(loss, weight_mode="exp")

    def __call__(self, output: Any, label: Any) -> Any:
        import torch

        heads = list(torch.unbind(output, dim=1)) if output.dim() == label.dim() + 1 else output
        return self.loss(heads, label)


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
            logits = _shipped_logits(model, image, config, num_classes, device, amp)
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


def _shipped_logits(model: Any, image: Any, config: dict[str, Any], num_classes: int, device: Any, amp: bool) -> Any:
    """Logits ``[1, classes, i, j, k]`` for a MONAI batch ``[1, channels, i, j, k]``, from the sliding window that
    inference runs with the exported spec's window (``inference`` in :func:`lesionseg.training.export.build_spec`),
    so the validation Dice is the Dice of the model as shipped."""
    from lesionseg.inference.window import sliding_window

    logits = sliding_window(
        image[0].permute(0, 3, 2, 1),  # the engine's [channels, k, j, i]
        model,
        config["augmentation"]["patch_size"],
        num_classes,
        overlap=config["validation"]["overlap"],
        sw_batch_size=config["validation"]["sw_batch_size"],
        device=device,
        amp=amp,
    ).logits
    return logits.permute(0, 3, 2, 1)[None]


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
    from lesionseg.inference.devices import subnormals_flushed

    output = Path(output)
    config, checkpoint, summary_writer = _run_config(output, config_source, epochs, resume, tensorboard)
    torch_device = _start_device(device)
    # Small gradients become subnormal floats in the backward pass; flushing them is restored when the run ends.
    with subnormals_flushed(torch_device):
        run = _Training(dataset_dir, config, output, checkpoint, torch_device, summary_writer, new_split, kept_split)
        return run.train(progress)


def _run_config(
    output: Path,
    config_source: str | Path | dict[str, Any] | None,
    epochs: int | None,
    resume: bool,
    tensorboard: bool | None,
) -> tuple[dict[str, Any], dict[str, Any] | None, Any]:
    """(config, checkpoint to resume or None, TensorBoard writer class or None), checked before torch starts."""
    latest = output / LATEST
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
    return config, checkpoint, summary_writer


def _start_device(device: str) -> Any:
    """This process's torch device, after joining torchrun's process group when there is one."""
    import torch
    import torch.distributed as dist

    from lesionseg.inference.devices import resolve_device

    _rank, world, local_rank = _distributed()
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device != "cpu" and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    torch_device = resolve_device(device, local_rank)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    return torch_device


def _seed(config: dict[str, Any], rank: int, torch_device: Any) -> None:
    import torch
    from monai.utils import set_determinism

    seed = int(config["training"]["seed"]) + rank
    if config["training"]["deterministic"]:
        set_determinism(seed=seed)  # also turns cuDNN's autotuner off and its deterministic kernels on
    else:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        # Seeded but fast: cuDNN may pick the quickest convolution algorithms for the fixed patch size.
        torch.backends.cudnn.benchmark = torch_device.type == "cuda"


class _Training:
    """One run: its setup (seeds, data, network, optimiser, a checkpoint's state), then epochs, checkpoints and the
    model folder at the finish."""

    def __init__(
        self,
        dataset_dir: str | Path,
        config: dict[str, Any],
        output: Path,
        checkpoint: dict[str, Any] | None,
        torch_device: Any,
        summary_writer: Any,
        new_split: bool,
        kept_split: dict[str, Any] | None,
    ) -> None:
        import torch

        from lesionseg.training.networks import config_network

        rank, world, _local_rank = _distributed()
        self.config, self.output, self.rank, self.world, self.device = config, output, rank, world, torch_device
        self.amp = bool(config["training"]["amp"]) and torch_device.type == "cuda"
        _seed(config, rank, torch_device)
        self._load_data(dataset_dir, checkpoint, new_split, kept_split)
        self.net_name, self.net_params, model = config_network(
            config, max(self.labels) + 1, len(self.data["channels"]) * max(1, len(config["preprocessing"]["windows"]))
        )
        self.model = model.to(torch_device)
        self.optimizer = _optimizer(config, self.model.parameters())
        self.scheduler = _scheduler(config, self.optimizer, config["training"]["epochs"])
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.loss_function = _loss(config)
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 1
        if checkpoint is not None:
            self._resume(checkpoint)
        self.trained = self.model
        if world > 1:
            self.trained = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[torch_device.index] if torch_device.type == "cuda" else None
            )
        self.writer = summary_writer(log_dir=str(output / "tensorboard")) if summary_writer and rank == 0 else None
        self.curve = _CurveSchedule(output)

    def _load_data(
        self, dataset_dir: str | Path, checkpoint: dict[str, Any] | None, new_split: bool, kept_split: dict | None
    ) -> None:
        """The split (a resumed run's own unless ``new_split``), written to ``split.json``; the cached loaders."""
        from monai.data import CacheDataset, ThreadDataLoader
        from monai.transforms import Compose, Randomizable

        config, output, rank, world = self.config, self.output, self.rank, self.world
        kept = json.loads(checkpoint["split"]) if checkpoint is not None and "split" in checkpoint else kept_split
        data = dataset_datalists(dataset_dir, config, None if new_split else kept)
        self.data = data
        self.labels = data["labels"]
        if checkpoint is not None and (kept is None or new_split):
            if kept is None and checkpoint["dataset_manifest_sha256"] != data["manifest_sha256"]:
                # A run from before splits were recorded: its split cannot be checked, only the manifest.
                log.warning(
                    "the dataset changed since this run started (its manifest hash differs); resuming on new data"
                )
            if new_split:
                log.warning(
                    "resuming on a new split (%d training, %d validation cases); validation scores from before are "
                    "not comparable with those that follow",
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
        random_chain = random_transforms(config, self.device, max(self.labels) + 1)
        self.random_parts = _random_sources(random_chain, Randomizable)
        train_ds = CacheDataset(
            train_items,
            Compose(deterministic_transforms(config) + random_chain),
            cache_rate=config["training"]["cache_rate"],
            num_workers=1,
            progress=False,
        )
        val_ds = (
            CacheDataset(
                data["validation"],
                Compose(deterministic_transforms(config)),
                cache_rate=1.0,
                num_workers=1,
                progress=False,
            )
            if rank == 0 and data["validation"]
            else None
        )
        self.train_loader = ThreadDataLoader(
            train_ds, batch_size=config["training"]["batch_size"], shuffle=True, num_workers=0
        )
        self.val_loader = ThreadDataLoader(val_ds, batch_size=1, num_workers=0) if val_ds is not None else None

    def _resume(self, checkpoint: dict[str, Any]) -> None:
        """Continue from a checkpoint: weights, optimiser, schedule, scaler, history and every random state."""
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.history = [json.loads(line) for line in checkpoint["history"]]
        self.start_epoch = int(checkpoint["epoch"]) + 1
        restore_rng_state(checkpoint["rng"], self.random_parts)
        if self.rank == 0:
            _write_metrics(self.output, self.history)

    def best(self) -> dict[str, Any] | None:
        validated = [h for h in self.history if selection_score(self.config, h) is not None]
        return max(validated, key=lambda h: (selection_score(self.config, h), -h["epoch"])) if validated else None

    def train(self, progress: Progress | None) -> TrainResult:
        """The epochs from the first not yet run; the model folder when they end or stop early."""
        from monai.data import set_track_meta

        # Cached tensors carry no metadata and the random part needs none; volumes left out of the cache
        # (cache_rate < 1) are loaded per iteration, and their orientation and spacing steps need it.
        set_track_meta(self.config["training"]["cache_rate"] < 1.0)
        try:
            epochs_run, stopped = self.epochs(progress)
            self.finish()
        finally:
            self.close()
        history = self.history
        best = self.best()
        return TrainResult(
            self.output,
            epochs_run,
            history[-1]["epoch"] if history else 0,
            best["epoch"] if best else None,
            best["dice_mean"] if best else None,
            stopped,
            history,
        )

    def epochs(self, progress: Progress | None) -> tuple[int, str | None]:
        """Each epoch with its checkpoint and event, until the last or an early stop: (epochs run, why stopped)."""
        import torch
        import torch.distributed as dist

        config, history, rank, world = self.config, self.history, self.rank, self.world
        total_epochs = config["training"]["epochs"]
        stopped: str | None = None
        epochs_run = 0
        for epoch in range(self.start_epoch, total_epochs + 1):
            entry, validate = self.epoch(epoch, total_epochs)
            history.append(entry)
            epochs_run += 1
            best = self.best()
            if rank == 0:
                self.checkpoint(entry, validate, best)
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
        return epochs_run, stopped

    def epoch(self, epoch: int, total_epochs: int) -> tuple[dict[str, Any], bool]:
        """Train one epoch, validating it when due: (its metrics entry, whether it was validated)."""
        import torch

        config, torch_device, optimizer, scaler = self.config, self.device, self.optimizer, self.scaler
        started = time.perf_counter()
        self.trained.train()
        loss_sum, steps, samples = 0.0, 0, 0
        iterations_cap = int(config["training"]["iterations_per_epoch"])
        for batch in self.train_loader:
            image = batch["image"].to(torch_device, non_blocking=True)
            label = batch["label"].to(torch_device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=torch_device.type, enabled=self.amp):
                loss = self.loss_function(self.trained(image), label)
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
        self.scheduler.step()
        entry: dict[str, Any] = {
            "epoch": epoch,
            "loss": round(loss_sum / max(steps, 1), 6),
            "lr": lr,
            "iterations": steps,
            "samples": samples,
            "train_s": round(train_seconds, 3),
        }
        validate = self.val_loader is not None and (
            epoch % config["validation"]["interval"] == 0 or epoch == total_epochs
        )
        if validate:
            # Iterating a loader draws from torch's generator; fork it so that when validation runs
            # does not change the training that follows (and resumed runs match uninterrupted ones).
            with torch.random.fork_rng(devices=[torch_device] if torch_device.type == "cuda" else []):
                entry.update(_validate(self.model, self.val_loader, config, torch_device, self.labels, self.amp))
        entry["time_s"] = round(time.perf_counter() - started, 3)
        history = self.history
        entry["elapsed_s"] = round(entry["time_s"] + (history[-1]["elapsed_s"] if history else 0.0), 3)
        return entry, validate

    def checkpoint(self, entry: dict[str, Any], validate: bool, best: dict[str, Any] | None) -> None:
        """Rank 0, after each epoch: the latest (and a new best) checkpoint, metrics.jsonl, the curve, TensorBoard."""
        epoch = entry["epoch"]
        state = {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(self.random_parts),
            "history": [json.dumps(h, sort_keys=True) for h in self.history],
            "config": json.dumps(self.config),
            "dataset_manifest_sha256": self.data["manifest_sha256"],
            # The cases (and their file hashes) this run trains and validates on; a resume keeps them.
            "split": json.dumps(self.data["split_record"]),
        }
        if validate and best is not None and best["epoch"] == epoch:
            save_checkpoint(self.output / BEST, state)
        save_checkpoint(self.output / LATEST, state)
        _write_metrics(self.output, self.history)
        if self.curve.due(validate):
            self.curve.draw(self.history)
        if self.writer is not None:
            _log_scalars(self.writer, entry)

    def finish(self) -> None:
        """Agree the ranks' weights, then (rank 0) write the model folder with the best checkpoint's weights."""
        import torch.distributed as dist

        model, output, history, world = self.model, self.output, self.history, self.world
        if world > 1:
            # Parameters agree through DDP's all-reduce; batch-norm statistics are rank 0's, as exported.
            for buffer in model.buffers():
                dist.broadcast(buffer.data, 0)
        digest = _state_digest(model.state_dict())
        digests = [digest]
        if world > 1:
            digests = [None] * world
            dist.all_gather_object(digests, digest)
        best = self.best()
        if self.rank == 0:
            from lesionseg.training.export import write_model_folder

            if history and self.curve.epoch != history[-1]["epoch"]:
                self.curve.draw(history)

            weights = (
                load_checkpoint(output / BEST)["model"]
                if best is not None and (output / BEST).is_file()
                else (model.state_dict())
            )
            write_model_folder(
                output,
                self.config,
                self.net_name,
                self.net_params,
                weights,
                self.labels,
                self.data,
                history,
                best,
                {"world_size": world, "rank_weight_sha256": digests, "device": str(self.device), "amp": self.amp},
            )

    def close(self) -> None:
        """Whether the run finished or not: the curve of every finished epoch, and the writer and group closed."""
        import torch.distributed as dist
        from monai.data import set_track_meta

        history = self.history
        if self.rank == 0 and history and self.curve.epoch != history[-1]["epoch"]:
            # Interrupted (cancelled, out of budget, failed): still leave a curve of every finished epoch,
            # without hiding the exception that got us here.
            try:
                self.curve.draw(history)
            except Exception:
                log.warning("could not draw %s", self.output / CURVE, exc_info=True)
        set_track_meta(True)
        if self.writer is not None:
            self.writer.close()
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


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
