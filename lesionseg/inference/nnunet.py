"""Segmenting with an nnU-Net v2 result folder, inside LesionSeg's own job (same events as our own models).

nnU-Net's own preprocessing, sliding window and resampling back run unchanged (``nnUNetPredictor`` with
``manual_initialization`` and ``predict_single_npy_array``); what differs from ``nnUNetv2_predict`` is around it:

* the network is built from ``plans.json`` and checkpoints load with ``weights_only=True``
  (:mod:`lesionseg.models.nnunet`), so no trainer lookup and no unpickled code;
* the image is fed **as stored**, as nnU-Net's ``SimpleITKIO`` reader gives it: the array in SimpleITK's (z, y, x)
  order, which is our :class:`~lesionseg.image.Image`'s ``[k, j, i]``, and the spacing reversed to (z, y, x).
  The direction is not used, as nnU-Net does not use it; the labelmap comes back on the input's grid.
  A model imported with orientation ``RAS`` (:mod:`lesionseg.models.nnunet_import`) gets the image re-indexed to
  RAS-canonical axes instead, and the result is indexed back;
* an imported model's checkpoints are checked against the SHA-256 recorded at import before they are loaded;
* every fold present (or ``folds``) is softmax-averaged, as nnU-Net's ensembling does within one configuration;
* a ``3d_cascade_fullres`` configuration runs its ``3d_lowres`` first stage and passes its labels on
  (a signed integer array: nnU-Net's one-hot encoding of a uint8 array overflows);
* progress counts nnU-Net's windows, and nnU-Net's prints go to stderr so ``--progress jsonl`` stays clean;
* the memory the predictor needs is estimated (:mod:`lesionseg.inference.nnunet_memory`) and a run that cannot fit
  is refused before any checkpoint loads, with the same message as our own models';
* ``crop_body`` runs nnU-Net on the box around the body (plus a margin) and pastes the labels back on the full grid.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lesionseg.image import Image
from lesionseg.inference.progress import EventSink, Progress, recording_warnings
from lesionseg.labels import LabelInfo
from lesionseg.models.nnunet import (
    CHECKPOINT_NAMES,
    NnunetConfiguration,
    NnunetModelError,
    foreground_labels,
    load_checkpoint,
    load_configuration,
    previous_stage_folder,
    resolve_configuration_folder,
)
from lesionseg.models.nnunet_import import verify_checkpoints

DEFAULT_TILE_STEP = 0.5
_COLOURS = [(0.9, 0.3, 0.2), (0.95, 0.85, 0.55), (0.3, 0.6, 0.9), (0.4, 0.8, 0.4), (0.8, 0.5, 0.9), (0.9, 0.6, 0.2)]


@dataclass
class NnunetOptions:
    """How to run a result folder (the CLI's nnU-Net options)."""

    configuration: str | None = None  # within a dataset folder; None: 3d_fullres first (PREFERRED_CONFIGURATIONS)
    folds: Sequence[str] | None = None  # None: every fold that holds the checkpoint
    checkpoint: str = "checkpoint_final.pth"
    mirroring: bool | None = None  # test-time mirroring; None: on for a GPU, off on the CPU (minutes per case there)
    tile_step_size: float = DEFAULT_TILE_STEP

    def check(self) -> None:
        if not 0.0 < self.tile_step_size <= 1.0:
            raise NnunetModelError(
                f"tile step size {self.tile_step_size} is out of range; give a fraction of the patch in (0, 1] "
                "(nnU-Net's default is 0.5; larger is faster and a little less accurate)"
            )
        if Path(self.checkpoint).name != self.checkpoint or not self.checkpoint.endswith(".pth"):
            raise NnunetModelError(
                f"checkpoint name {self.checkpoint!r}: give a file name such as {' or '.join(CHECKPOINT_NAMES)}"
            )


@dataclass
class LoadedStage:
    configuration: NnunetConfiguration
    predictor: Any
    folds: list[str]
    checkpoint_files: list[Path]
    verified: bool = False  # checkpoints matched the SHA-256 recorded when the model was imported


def labels_of(configuration: NnunetConfiguration) -> list[LabelInfo]:
    """dataset.json's labels as LabelInfo (region-based label lists give their first value)."""
    out = []
    for name, value in configuration.labels.items():
        number = int(value[0] if isinstance(value, (list, tuple)) else value)
        if number != 0:
            out.append(LabelInfo(number, str(name), _COLOURS[(number - 1) % len(_COLOURS)]))
    return sorted(out, key=lambda label: label.value)


class _WindowCounter:
    """Counts nnU-Net's sliding-window steps (over every fold) for true percent progress."""

    def __init__(self, report: Callable[[int, int], None] | None):
        self.report = report
        self.done = 0
        self.total = 0


def _predictor_class():
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    class ReportingPredictor(nnUNetPredictor):
        counter: _WindowCounter | None = None

        def _internal_get_sliding_window_slicers(self, image_size):
            slicers = super()._internal_get_sliding_window_slicers(image_size)
            if self.counter is not None and self.counter.total == 0:
                self.counter.total = len(slicers) * max(1, len(self.list_of_parameters))
            return slicers

        def _internal_maybe_mirror_and_predict(self, x):
            out = super()._internal_maybe_mirror_and_predict(x)
            counter = self.counter
            if counter is not None:
                counter.done += 1
                if counter.report is not None:
                    counter.report(counter.done, max(counter.total, counter.done))
            return out

    return ReportingPredictor


def load_stage(configuration: NnunetConfiguration, options: NnunetOptions, device: Any) -> LoadedStage:
    """A predictor for one configuration: network from the plans, every chosen fold's weights loaded safely."""
    with contextlib.redirect_stdout(sys.stderr):  # nnU-Net prints (its predictor's constructor does)
        return _load_stage(configuration, options, device)


def require_nnunet() -> None:
    """nnunetv2 and dynamic-network-architectures are importable, or one error that says how to install them."""
    try:
        import dynamic_network_architectures  # noqa: F401
        import nnunetv2.inference.predict_from_raw_data  # noqa: F401
    except ImportError as error:
        raise NnunetModelError(
            f"nnU-Net models need the nnunetv2 package, which cannot be imported here ({error}); install it with "
            "`pip install --no-deps -r requirements/nnunet.txt` (without --no-deps pip would replace the CPU torch)"
        ) from error


def _load_stage(configuration: NnunetConfiguration, options: NnunetOptions, device: Any) -> LoadedStage:
    require_nnunet()
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    available = configuration.folds(options.checkpoint)
    if not available:
        others = [name for name in CHECKPOINT_NAMES if name != options.checkpoint and configuration.folds(name)]
        fix = f"give --checkpoint {others[0]}" if others else "the training of this configuration has not finished"
        raise NnunetModelError(f"{configuration.folder}: no fold_*/{options.checkpoint}; {fix}")
    folds = [str(f) for f in options.folds] if options.folds else available
    missing = [f for f in folds if f not in available]
    if missing:
        raise NnunetModelError(
            f"{configuration.folder}: fold(s) {', '.join(missing)} have no {options.checkpoint}; "
            f"folds present: {', '.join(available)}"
        )
    files = [configuration.checkpoint_path(f, options.checkpoint) for f in folds]
    verified = verify_checkpoints(configuration.folder, files)  # an imported model: hashes recorded at import
    checkpoints = [load_checkpoint(path) for path in files]
    first = checkpoints[0]
    trained = first["init_args"].get("configuration")
    if trained is not None and trained != configuration.name:
        raise NnunetModelError(
            f"{files[0]} was trained as {trained!r} but lies in the {configuration.name!r} folder; "
            "put it back in its own configuration folder"
        )
    network = configuration.build_network()
    for path, checkpoint in zip(files, checkpoints, strict=True):
        try:
            network.load_state_dict(checkpoint["network_weights"])  # each fold must fit the plans' network
        except RuntimeError as error:
            raise NnunetModelError(
                f"{path}: its weights do not fit the network of plans.json ({str(error).splitlines()[0]}); "
                "the checkpoint belongs to another plans file"
            ) from error
    mirroring = options.mirroring if options.mirroring is not None else device.type == "cuda"
    predictor = _predictor_class()(
        tile_step_size=options.tile_step_size,
        use_gaussian=True,
        use_mirroring=mirroring,
        perform_everything_on_device=device.type == "cuda",
        device=device,
        verbose=False,
        verbose_preprocessing=False,
        allow_tqdm=False,
    )
    plans_manager = PlansManager(configuration.plans)
    axes = first.get("inference_allowed_mirroring_axes")
    predictor.manual_initialization(
        network.to(device),
        plans_manager,
        plans_manager.get_configuration(configuration.name),
        [c["network_weights"] for c in checkpoints],
        configuration.dataset,
        str(first["trainer_name"]),
        tuple(axes) if axes is not None else None,
    )
    return LoadedStage(configuration, predictor, folds, files, verified)


def model_orientation(configuration_folder: Path) -> str:
    """``as stored`` (nnU-Net's own behaviour) unless the import's sidecar says the model was trained in RAS."""
    import json

    from lesionseg.models.nnunet_import import find_sidecar

    sidecar = find_sidecar(configuration_folder)
    if sidecar is None:
        return "as stored"
    orientation = json.loads(sidecar.read_text(encoding="utf-8")).get("orientation", "as stored")
    if orientation not in ("as stored", "RAS"):
        raise NnunetModelError(f"{sidecar}: orientation {orientation!r} is neither 'as stored' nor 'RAS'")
    return orientation


def nnunet_input(image: Image, *further: Image) -> tuple[np.ndarray, dict]:
    """The array and properties nnU-Net's SimpleITKIO reader gives for these channels' files: (c, z, y, x) and the
    spacing (z, y, x).  Further channels must already lie on the first's grid (:func:`align_channels`)."""
    for other in further:
        if not other.same_grid(image):
            raise RuntimeError("internal error: a further channel is not on the first channel's grid")
    array = np.stack([np.asarray(each.array, dtype=np.float32) for each in (image, *further)])
    return array, {"spacing": [float(s) for s in image.spacing[::-1]]}


def channel_names(configuration: NnunetConfiguration) -> list[str]:
    """The model's input channels in order, by their dataset.json names (one unnamed channel when it has none)."""
    names = configuration.channel_names
    if not names:
        return ["image"]
    return [names[key] for key in sorted(names, key=lambda k: int(k) if k.isdigit() else 0)]


def _run_stage(
    stage: LoadedStage, images: Sequence[Image], previous: np.ndarray | None, counter: _WindowCounter
) -> np.ndarray:
    image = images[0]
    array, properties = nnunet_input(*images)
    stage.predictor.counter = counter
    with contextlib.redirect_stdout(sys.stderr):
        labels = stage.predictor.predict_single_npy_array(array, properties, previous)
    labels = np.asarray(labels)
    if labels.shape != image.array.shape:
        raise RuntimeError(f"internal error: nnU-Net returned shape {labels.shape} for an input of {image.array.shape}")
    return labels


def _body_box(image: Image, reporter: Progress) -> tuple[slice, slice, slice] | None:
    """Array slices of the box around the body plus the pipeline's margin; None (and a warning) without a body."""
    from lesionseg.inference.crop import body_box_world, box_on_grid
    from lesionseg.inference.pipeline import CROP_MARGIN_MM

    corners = body_box_world(image)
    if corners is None:
        reporter.warning("--crop-body found no body (nothing above -500 HU); segmenting the whole volume")
        return None
    box = box_on_grid(corners, image, CROP_MARGIN_MM)
    reporter.message(f"body crop: {[int(s.stop - s.start) for s in box][::-1]} of {list(image.size)} voxels")
    return box


def _cropped(image: Image, box: tuple[slice, slice, slice]) -> Image:
    start_ijk = np.array([[box[2].start, box[1].start, box[0].start]], dtype=float)
    return Image(np.ascontiguousarray(image.array[box]), image.spacing, image.world(start_ijk)[0], image.direction)


def _stage_folds(configuration: NnunetConfiguration, options: NnunetOptions) -> int:
    return len(options.folds) if options.folds else max(1, len(configuration.folds(options.checkpoint)))


def predict_nnunet(
    image: Image | Sequence[Image],
    model: str | Path,
    options: NnunetOptions | None = None,
    device: str = "auto",
    progress=None,
    crop_body: bool = False,
) -> tuple[Image, list[LabelInfo], dict[str, Any]]:
    """The labelmap (uint8, on the first image's grid), the labels and a description of what ran.

    ``image`` is one image, or one per channel of ``dataset.json`` in its order, all on the first one's grid
    (:func:`lesionseg.inference.channels.align_channels` puts them there).  ``crop_body``: nnU-Net sees only the
    box around the body in the first channel (CT above -500 HU) plus a margin; the labels outside it are 0.
    """
    images = [image] if isinstance(image, Image) else list(image)
    image = full_grid = images[0]
    from lesionseg.inference.devices import resolve_device

    options = options or NnunetOptions()
    options.check()
    reporter = progress if isinstance(progress, Progress) else Progress(progress)
    reporter.stage("load")
    configuration = load_configuration(resolve_configuration_folder(model, options.configuration))
    torch_device = resolve_device(device)
    chain = [configuration]
    if configuration.previous_stage is not None:
        chain.insert(0, load_configuration(previous_stage_folder(configuration)))
    names = channel_names(configuration)
    if len(images) != len(names):
        raise NnunetModelError(
            f"{configuration.folder} needs {len(names)} input image(s) ({', '.join(names)}), "
            f"{len(images)} given; give one per channel, in this order"
        )
    box = _body_box(image, reporter) if crop_body else None
    if box is not None:
        images = [_cropped(each, box) for each in images]
        image = images[0]
    orientation = model_orientation(configuration.folder)
    permutation = None
    if orientation == "RAS":
        # A model trained on RAS-canonical images (TotalSegmentator's way): feed the image re-indexed to RAS
        # (lossless: axes permuted and flipped), and index the result back to the input's axes.
        from lesionseg.inference.axes import monai_reorientation, permute_axes

        permutation = monai_reorientation(image, "RAS")
        source_image = image
        images = [permute_axes(each, *permutation) for each in images]
        image = images[0]
    from lesionseg.inference.nnunet_memory import check_nnunet_memory

    mirroring = options.mirroring if options.mirroring is not None else torch_device.type == "cuda"
    counted = []  # each stage with its fold count; a cascade's first stage runs all of its own folds
    for config in chain:
        own = options if config is configuration else NnunetOptions(checkpoint=options.checkpoint)
        counted.append((config, _stage_folds(config, own)))
    memory = check_nnunet_memory(counted, image, mirroring, torch_device, crop_body)
    stages = []
    for index, config in enumerate(chain):
        stage_options = options
        if index < len(chain) - 1:
            # --folds names the folds of the configuration asked for; the first stage uses all of its own.
            stage_options = NnunetOptions(None, None, options.checkpoint, options.mirroring, options.tile_step_size)
        stages.append(load_stage(config, stage_options, torch_device))
        reporter.update((index + 1) / len(chain))
    reporter.stage("preprocess")
    if len(stages) > 1:
        reporter.message(f"cascade: {stages[0].configuration.name} first, then {configuration.name}")
    reporter.stage("inference")
    previous = None
    for index, stage in enumerate(stages):

        def windows(done: int, total: int, index=index) -> None:
            last = done >= total  # never throttled: the bar must reach the end of the stage
            reporter.update((index + done / total) / len(stages), force=last, windows_done=done, windows_total=total)

        labels = _run_stage(stage, images, previous, _WindowCounter(windows))
        if index < len(stages) - 1:
            # Signed: nnU-Net one-hot encodes it and a uint8 array overflows there (NOTES §7).
            previous = labels.astype(np.int16)[None]
    reporter.stage("postprocess")
    values = foreground_labels(configuration.labels)
    dtype = np.uint8 if not values or max(values) < 256 else np.uint16
    labelmap = image.with_array(labels.astype(dtype))
    if permutation is not None:
        from lesionseg.inference.axes import permute_axes, undo_permutation

        labelmap = permute_axes(labelmap, *undo_permutation(*permutation))
        if not labelmap.same_grid(source_image):
            raise RuntimeError("internal error: the labelmap did not return to the input grid after reorientation")
    if box is not None:
        pasted = np.zeros(full_grid.array.shape, dtype=labelmap.array.dtype)
        pasted[box] = labelmap.array
        labelmap = full_grid.with_array(pasted)
    info = {
        "configuration": configuration.name,
        "folder": str(configuration.folder),
        "stages": [
            {
                "configuration": s.configuration.name,
                "folds": s.folds,
                "checkpoints": [str(f) for f in s.checkpoint_files],
            }
            for s in stages
        ],
        "mirroring": bool(stages[-1].predictor.use_mirroring),
        "weights_verified": all(s.verified for s in stages),
        "tile_step_size": options.tile_step_size,
        "orientation": orientation,
        "channels": names,
        "memory_estimate_gib": round(memory.host_bytes / 1024**3, 2),
        "body_crop": None if box is None else [int(s.stop - s.start) for s in box][::-1],
    }
    reporter.update(1.0)
    return labelmap, labels_of(configuration), info


def segment_file_nnunet(
    model: str | Path,
    input_path: str | Path | Sequence[str | Path],
    output_path: str | Path,
    device: str = "auto",
    progress: EventSink | None = None,
    options: NnunetOptions | None = None,
    named_channels: Sequence[str] = (),
    crop_body: bool = False,
) -> dict[str, Any]:
    """Read the image(s), segment with an nnU-Net result folder, write the labelmap atomically; the result event.

    ``input_path`` is one path, or one per channel of ``dataset.json`` in its order; ``named_channels`` gives them
    as ``NAME=PATH`` instead.  Further channels are resampled onto the first one's grid, which the labelmap lies on.
    """
    from lesionseg.inference.channels import align_channels, assign_channels, read_channel
    from lesionseg.inference.output import labelmap_format, write_result_labelmap

    started = time.perf_counter()
    labelmap_format(output_path)  # a bad output name is refused before any work
    reporter, warnings = recording_warnings(progress)
    inputs = [input_path] if isinstance(input_path, (str, Path)) else list(input_path or [])
    configuration = load_configuration(resolve_configuration_folder(model, (options or NnunetOptions()).configuration))
    assigned = assign_channels(channel_names(configuration), [str(p) for p in inputs], named_channels)
    images = align_channels([read_channel(name, path) for name, path in assigned])
    labelmap, labels, info = predict_nnunet(images, model, options, device, reporter, crop_body)
    written, listed = write_result_labelmap(labelmap, labels, output_path, reporter)
    return {
        "event": "result",
        "output": str(written),
        "input": assigned[0][1],
        **({"inputs": dict(assigned)} if len(assigned) > 1 else {}),
        "model": str(model),
        "engine": "nnunet",
        "nnunet": info,
        "labels": listed,
        "device": device,
        "warnings": warnings,
        "seconds": round(time.perf_counter() - started, 3),
    }
