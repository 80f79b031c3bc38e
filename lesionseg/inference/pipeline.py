"""``segment_image``: an engine image in, a labelmap on exactly the same grid out.

The steps reproduce a MONAI bundle's canonical inference (LoadImage → Orientation → Spacing →
ScaleIntensityRange → SlidingWindowInferer → softmax → Invertd → argmax) with the same sampling points:

1. reorient to the spec's axcodes as MONAI does, oblique grids included (lossless re-indexing, :mod:`.axes`);
2. resample to the spec's spacing with separable linear interpolation (:mod:`.resample`), scale intensities;
3. optionally crop to the body on that grid, and flip for the Decathlon quirk when the spec compensates it;
4. sliding window (:mod:`.window`), softmax of the stitched logits;
5. resample the probabilities back onto the reoriented input grid, in slabs, and take the argmax there
   (or, for a model with one foreground label and a threshold, keep voxels whose probability exceeds it);
6. undo the reorientation, so the labelmap lies on the input's grid whatever its orientation;
7. post-process (largest component, minimum volume, holes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lesionseg.image import Image
from lesionseg.inference.axes import monai_reorientation, permute_axes, undo_permutation
from lesionseg.inference.crop import body_box_world, box_on_grid, region_around_labels
from lesionseg.inference.devices import free_memory_bytes, host_memory, resolve_device, subnormals_flushed
from lesionseg.inference.memory import check_memory_plan, plan_memory
from lesionseg.inference.postprocess import postprocess
from lesionseg.inference.progress import EventSink, Progress, recording_warnings
from lesionseg.inference.resample import (
    AxisMap,
    axis_map,
    first_pass_voxels,
    grid_starts,
    interpolate_axis,
    is_axis_aligned,
    resample_array_in_slabs,
    target_shape_ijk,
)
from lesionseg.inference.validity import check_model_input, read_model_input
from lesionseg.inference.window import count_windows, sliding_window
from lesionseg.labels import LabelInfo
from lesionseg.models.network import load_network
from lesionseg.models.spec import IntensitySpec, ModelSpec, check_probability, check_threshold
from lesionseg.models.weights import verify_weights

log = logging.getLogger(__name__)
CROP_MARGIN_MM = 20.0
_INVERT_SLAB = 16  # output slices resampled at a time: bounds the memory of the inversion


@dataclass
class LoadedModel:
    """A spec with its network on a device, ready for repeated use (the warm worker keeps these)."""

    spec: ModelSpec
    network: Any
    device: Any
    weights_verified: bool
    coarse: "LoadedModel | None" = None  # a cascade's first stage (spec.cascade)
    backend: str = "torch"  # what runs the network: torch or openvino (see openvino_backend.choose_backend)
    precision: str = "fp32"  # the OpenVINO network's precision; torch runs fp32 (CUDA: AMP per the spec)
    notes: tuple[str, ...] = ()  # lines each run reports: a fallback from the backend or precision asked for


def resolve_spec(model: str | Path | ModelSpec, models_dir: str | Path | None = None) -> ModelSpec:
    if isinstance(model, ModelSpec):
        return model
    from lesionseg.models.registry import ModelRegistry

    return ModelRegistry(models_dir).get(model)


def load_model(
    model: str | Path | ModelSpec,
    device: str = "auto",
    models_dir: str | Path | None = None,
    backend: str = "auto",
    precision: str | None = None,
) -> LoadedModel:
    """Resolve, verify and load a model; refuses altered or unsafe weights.

    ``backend`` (auto, torch, openvino) and ``precision`` (fp32, bf16; None: the spec's ``inference.precision``)
    choose what runs the network, as :mod:`lesionseg.inference.openvino_backend` describes.
    """
    from lesionseg.inference.openvino_backend import check_backend, check_precision

    check_backend(backend)
    if precision is not None:
        check_precision(precision)
    spec = resolve_spec(model, models_dir)
    torch_device = resolve_device(device)
    coarse_spec = spec.coarse_spec()
    coarse = None if coarse_spec is None else load_model(coarse_spec, device, backend=backend, precision=precision)
    hashes = verify_weights(spec)
    network = load_network(spec, verify=False).to(torch_device)
    verified = bool(hashes["verified"]) and (coarse is None or coarse.weights_verified)
    network, chosen, precision, notes = _network_backend(spec, network, hashes, torch_device, backend, precision)
    return LoadedModel(spec, network, torch_device, verified, coarse, chosen, precision, notes)


def _network_backend(spec: ModelSpec, network, hashes: dict, device, backend: str, precision: str | None):
    """The network wrapped for the backend that runs it, that backend, the precision it runs at, and notes."""
    from lesionseg.inference.openvino_backend import bf16_supported, check_precision, choose_backend, openvino_network

    precision = check_precision(precision or spec.inference.precision)
    chosen, note = choose_backend(backend, device.type)
    notes = [] if note is None else [note]
    if chosen == "torch":
        if precision != "fp32":
            notes.append(f"precision {precision} applies to the OpenVINO CPU network; torch runs fp32")
        return network, chosen, "fp32", tuple(notes)
    if precision == "bf16" and not bf16_supported():
        import openvino as ov

        capabilities = ", ".join(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        notes.append(f"this CPU has no bf16 (OpenVINO lists {capabilities}); the network runs fp32")
        precision = "fp32"
    wrapped = openvino_network(network, hashes["sha256"], spec.folder, spec.id, precision, log=log.info)
    return wrapped, chosen, precision, tuple(notes)


def _scale_intensity(volume, options: IntensitySpec):
    import torch

    if options.kind == "range":
        span = options.a_max - options.a_min
        if span == 0:
            raise ValueError("the spec's intensity range has a_min == a_max; give two different values")
        volume = (volume - options.a_min) / span * (options.b_max - options.b_min) + options.b_min
        if options.clip:
            volume = volume.clamp(min(options.b_min, options.b_max), max(options.b_min, options.b_max))
        return volume
    values = volume[volume != 0] if options.nonzero else volume
    if values.numel() == 0:
        return volume
    mean, std = values.mean(), values.std(unbiased=False)
    std = std if std > 0 else torch.tensor(1.0)
    if options.nonzero:
        return torch.where(volume != 0, (volume - mean) / std, volume)
    return (volume - mean) / std


def _network_channels(reoriented: Image, further: Sequence[Image], permutation, forward, device, intensity):
    """``[channels, k, j, i]`` on the network grid, each channel scaled (see ``channels.channel_intensity``).

    ``further`` are the other channels on the (not reoriented) input grid, as ``channels.align_channels`` gives them.
    """
    import torch

    from lesionseg.inference.channels import channel_intensity

    arrays = [reoriented.array, *(permute_axes(each, *permutation).array for each in further)]
    volumes = []
    for channel, array in enumerate(arrays):
        options = intensity if channel == 0 else IntensitySpec(**channel_intensity(asdict(intensity), channel))
        volumes.append(_scale_intensity(resample_array_in_slabs(array, forward, device), options))
    return volumes[0][None] if len(volumes) == 1 else torch.stack(volumes)


def _grid_image(reference: Image, spacing: np.ndarray, shape_ijk: tuple, start_ijk: tuple) -> Image:
    """Geometry of the network grid (a broadcast array stands in for voxels: only the grid is used)."""
    dummy = np.broadcast_to(np.zeros(1, dtype=np.uint8), tuple(reversed(shape_ijk)))
    return Image(dummy, spacing, reference.world(start_ijk), reference.direction)


def _invert_to_labels(
    scores,
    maps_kji: list[AxisMap],
    binary: bool,
    progress: Callable[[float], None] | None = None,
    cut: float = 0.0,
) -> np.ndarray:
    """Resample class scores from the network grid to the input grid in slabs; argmax per voxel.

    For a binary model ``scores`` holds p1 - p0 and a voxel is foreground above ``cut`` (0: the argmax).
    """
    import torch

    kmap, jmap, imap = maps_kji
    n_out = len(kmap.lower)
    out = np.zeros((n_out, len(jmap.lower), len(imap.lower)), dtype=np.uint8)
    for k0 in range(0, n_out, _INVERT_SLAB):
        k1 = min(k0 + _INVERT_SLAB, n_out)
        first = int(kmap.lower[k0:k1].min())
        last = int(kmap.upper[k0:k1].max())
        local = AxisMap(kmap.lower[k0:k1] - first, kmap.upper[k0:k1] - first, kmap.weight[k0:k1])
        slab = scores[:, first : last + 1]
        slab = interpolate_axis(slab, 1, local)
        slab = interpolate_axis(interpolate_axis(slab, 2, jmap), 3, imap)
        labels = (slab[0] > cut) if binary else slab.argmax(dim=0)
        out[k0:k1] = labels.to(torch.uint8).cpu().numpy()
        if progress:
            progress(k1 / n_out)
    return out


def predict_labelmap(
    image: Image,
    model: LoadedModel,
    progress: Progress,
    crop_body: bool = False,
    threshold: float | None = None,
    further: Sequence[Image] = (),
) -> Image:
    """Labelmap (uint8) on ``image``'s grid, before post-processing.

    ``further``: a multi-channel model's other channels, already on ``image``'s grid.

    ``threshold`` (one-foreground-label models only): foreground where its probability exceeds it, instead of
    the argmax; None takes the spec's ``inference.threshold``, and the argmax when that is unset.
    """
    import torch

    threshold = check_threshold(model.spec, threshold)

    spec, device = model.spec, model.device
    pre, inf = spec.preprocessing, spec.inference
    progress.stage("preprocess")
    permutation = monai_reorientation(image, pre.orientation)
    reoriented = permute_axes(image, *permutation)
    size_ijk = reoriented.size
    spacing = reoriented.spacing
    target_spacing = np.asarray(pre.spacing if pre.spacing is not None else spacing, dtype=float)
    shape_ijk = target_shape_ijk(size_ijk, spacing, pre.spacing)
    step = target_spacing / spacing
    start = grid_starts(size_ijk, shape_ijk, step, is_axis_aligned(reoriented.direction))
    forward = [axis_map(size_ijk[a], shape_ijk[a], step[a], start[a]) for a in (2, 1, 0)]
    backward = [axis_map(shape_ijk[a], size_ijk[a], 1.0 / step[a], -start[a] / step[a]) for a in (2, 1, 0)]
    grid = _grid_image(reoriented, target_spacing, shape_ijk, start)
    num_classes = spec.num_classes
    host = host_memory()
    plan = plan_memory(
        int(np.prod(shape_ijk)),
        num_classes,
        inf.roi_size,
        inf.sw_batch_size,
        device.type,
        free_memory_bytes(device) if device.type == "cuda" else 0,
        host.available_bytes,
        input_voxels=int(np.prod(size_ijk)),
        amp=inf.amp,
        input_itemsize=reoriented.array.dtype.itemsize,
        first_pass_voxels=first_pass_voxels(reoriented.array.shape, forward),
    )
    check_memory_plan(plan, host, device.type, crop_body)
    if plan.note:
        progress.message(plan.note)
    volume_device = device if plan.stitch_on_device else torch.device("cpu")
    progress.update(0.3)
    volume = _network_channels(reoriented, further, permutation, forward, volume_device, pre.intensity)
    progress.update(0.8)
    region = (slice(None), slice(None), slice(None))
    if crop_body:
        corners = body_box_world(image)
        if corners is None:
            progress.warning("--crop-body found no body (nothing above -500 HU); segmenting the whole volume")
        else:
            region = box_on_grid(corners, grid, CROP_MARGIN_MM)
            progress.message(f"body crop: {[int(s.stop - s.start) for s in region][::-1]} of {list(shape_ijk)} voxels")
    network_input = volume[(slice(None), *region)]
    if pre.orientation_quirk == "compensate":
        network_input = network_input.flip(-1, -2)  # tensor axes 0 and 1 (i, j) are the last two here
    network_input = network_input.contiguous()
    del volume
    progress.stage("inference")
    windows = count_windows(tuple(network_input.shape[1:][::-1]), inf.roi_size, inf.overlap)
    on = f"{device}" if model.backend == "torch" else f"{device} through OpenVINO ({model.precision})"
    progress.message(f"{windows} windows of {list(inf.roi_size)} voxels, batch {plan.sw_batch_size}, on {on}")
    stats: dict = {}
    logits = sliding_window(
        network_input,
        model.network,
        inf.roi_size,
        num_classes,
        overlap=inf.overlap,
        sw_batch_size=plan.sw_batch_size,
        blend=inf.blend,
        device=device,
        stitch_device=volume_device,
        amp=inf.amp,
        flip_tta=inf.flip_tta,
        progress=lambda done, total: progress.update(done / total, windows_done=done, windows_total=total),
        stats=stats,
    )
    if stats.get("computed", windows) < windows:
        progress.message(f"{windows - stats['computed']} windows of constant input reused one computed prediction")
    del network_input
    progress.stage("postprocess")
    if pre.orientation_quirk == "compensate":
        logits = logits.flip(-1, -2)
    probabilities = torch.softmax(logits, dim=0)
    del logits
    binary = num_classes == 2
    if binary:
        # Linear interpolation commutes with p1 - p0, so its sign after inversion is MONAI's argmax.
        probabilities = (probabilities[1] - probabilities[0])[None]
    full_shape = (probabilities.shape[0], *reversed(shape_ijk))
    if region != (slice(None),) * 3:
        scores = torch.zeros(full_shape, dtype=torch.float32, device=probabilities.device)
        if binary:
            scores.fill_(-1.0)
        else:
            scores[0] = 1.0
        scores[(slice(None), *region)] = probabilities
    else:
        scores = probabilities
    del probabilities
    # p1 - p0 = 2 p1 - 1 for two classes, so "p1 > t" is "p1 - p0 > 2t - 1" (interpolation keeps this exact).
    cut = 0.0 if threshold is None else 2.0 * threshold - 1.0
    labels = _invert_to_labels(scores, backward, binary, lambda fraction: progress.update(0.8 * fraction), cut)
    labelmap = Image(labels, reoriented.spacing, reoriented.origin, reoriented.direction)
    restored = permute_axes(labelmap, *undo_permutation(*permutation))
    if not restored.same_grid(image):
        raise RuntimeError("internal error: the labelmap did not return to the input grid after reorientation")
    return restored


def segment_image(
    image: Image,
    spec_or_model: str | Path | ModelSpec | LoadedModel,
    device: str = "auto",
    progress: EventSink | Callable[[dict], None] | None = None,
    crop_body: bool = False,
    models_dir: str | Path | None = None,
    threshold: float | None = None,
    modality: str | None = None,
    allow_modality: str | None = None,
    backend: str = "auto",
    precision: str | None = None,
    further: Sequence[Image] = (),
) -> tuple[Image, list[LabelInfo]]:
    """Segment an engine image; returns the labelmap on ``image``'s grid and the model's labels.

    ``image`` is a multi-channel model's first channel, and ``further`` its other channels, in the spec's order,
    already on ``image``'s grid (:func:`lesionseg.inference.channels.align_channels` puts them there).

    ``spec_or_model`` is a model id, a model or bundle folder, a ModelSpec, or a LoadedModel (reused as is).
    ``progress`` receives the event dictionaries described in :mod:`lesionseg.inference.progress`.
    ``threshold`` (one-foreground-label models): the probability above which a voxel is foreground; for a
    cascade it applies to the refinement stage.
    ``modality`` is the input's DICOM Modality when known: one the spec does not name is refused unless it
    is ``allow_modality``.  Input the model cannot be right on (a single slice, a degenerate extent) is
    refused, and input that looks wrong for it (a "CT" without HU) is reported as a ``warning`` event
    (see :mod:`lesionseg.inference.validity`).
    ``backend`` and ``precision`` choose what runs the network when the model is loaded here (see ``load_model``).
    """
    reporter = progress if isinstance(progress, Progress) else Progress(progress)
    if not isinstance(spec_or_model, LoadedModel):
        reporter.stage("load")
        spec_or_model = load_model(spec_or_model, device, models_dir, backend, precision)
        reporter.update(1.0)
    model = spec_or_model
    check_channel_count(model.spec, 1 + len(further))
    check_threshold(model.spec, threshold)  # before any inference, a cascade's coarse pass included
    stages = () if model.coarse is None else (model.coarse.spec,)
    for text in check_model_input(image, model.spec, modality, allow_modality, window_specs=stages):
        reporter.warning(text)
    if not model.weights_verified:
        reporter.warning(f"model {model.spec.id!r}: its weights have no hash to check against (unverified)")
    for note in model.notes:
        reporter.message(note)
    with subnormals_flushed(model.device):
        if model.coarse is None:
            labelmap = predict_labelmap(image, model, reporter, crop_body, threshold, further)
        else:
            labelmap = _predict_two_steps(image, model, reporter, crop_body, threshold)
    labelmap = postprocess(labelmap, model.spec.postprocessing)
    reporter.update(1.0)
    return labelmap, list(model.spec.labels)


def check_channel_count(spec: ModelSpec, given: int) -> None:
    """Refuse a number of input images other than the model's channels, naming them."""
    if given != spec.input_channels:
        names = ", ".join(spec.channel_names)
        raise ValueError(
            f"model {spec.id!r} takes {spec.input_channels} image(s) ({names}), {given} given; give one per channel, "
            "in that order (segment --input once per channel, or --channel NAME=PATH)"
        )
    if given > 1 and spec.cascade is not None:
        raise ValueError(f"model {spec.id!r}: a cascade with several input channels is not supported yet")


def _predict_two_steps(
    image: Image, model: LoadedModel, reporter: Progress, crop_body: bool, threshold: float | None = None
) -> Image:
    """A cascade: the coarse stage on the whole image, then this model on the box around what it found."""
    coarse_model = model.coarse
    assert coarse_model is not None and model.spec.cascade is not None
    reporter.stage("preprocess")

    def forward(event: dict) -> None:
        # The coarse pass is reported inside the preprocess band; its own messages say which stage spoke.
        if event["event"] == "progress":
            reporter.update(0.9 * event["percent"] / 100.0, cascade="coarse")
        elif event["event"] in ("message", "warning"):
            getattr(reporter, event["event"])(f"coarse stage: {event['text']}")

    coarse = predict_labelmap(image, coarse_model, Progress(forward), crop_body=crop_body)
    coarse = postprocess(coarse, coarse_model.spec.postprocessing)
    box = region_around_labels(coarse, model.spec.cascade.margin_mm)
    if box is None:
        reporter.message("coarse stage found nothing; there is no region to refine")
        return coarse
    sizes = [int(s.stop - s.start) for s in box][::-1]
    reporter.message(f"coarse stage: refining a region of {sizes} of {list(image.size)} voxels")
    start_ijk = np.array([s.start for s in box][::-1], dtype=float)
    crop = Image(np.ascontiguousarray(image.array[box]), image.spacing, image.world(start_ijk), image.direction)
    fine = predict_labelmap(crop, model, reporter, threshold=threshold)
    out = np.zeros(image.array.shape, dtype=fine.array.dtype)
    out[box] = fine.array
    return image.with_array(out)


def segment_file(
    model: str | Path | ModelSpec | LoadedModel,
    input_path: str | Path | Sequence[str | Path],
    output_path: str | Path,
    device: str = "auto",
    progress: EventSink | None = None,
    crop_body: bool = False,
    models_dir: str | Path | None = None,
    threshold: float | None = None,
    allow_modality: str | None = None,
    backend: str = "auto",
    precision: str | None = None,
    named_channels: Sequence[str] = (),
) -> dict[str, Any]:
    """Read an image (file or DICOM folder), segment it, write the labelmap atomically; returns the result event.

    A multi-channel model takes ``input_path`` as one path per channel in its spec's order, or ``named_channels``
    as ``NAME=PATH``; further channels are resampled onto the first one's grid, which the labelmap lies on.

    The result event's ``warnings`` repeats every warning event of the run, so a caller that keeps only
    the result still sees that, for instance, the input did not look like CT.
    """
    import time

    from lesionseg.inference.output import labelmap_format, write_result_labelmap

    started = time.perf_counter()
    labelmap_format(output_path)  # refuse a bad output name before any work
    if threshold is not None:
        check_probability(threshold)
    reporter, warnings = recording_warnings(progress)
    reporter.stage("load")
    inputs = [input_path] if isinstance(input_path, (str, Path)) else list(input_path)
    spec = model.spec if isinstance(model, LoadedModel) else resolve_spec(model, models_dir)
    assigned, further = [("image", str(inputs[0]) if inputs else "")], []
    if spec.input_channels == 1 and len(inputs) == 1 and not named_channels:
        source = read_model_input(inputs[0])
    else:
        from lesionseg.inference.channels import align_channels, assign_channels, check_channel_modalities, read_channel

        assigned = assign_channels(spec.channel_names, [str(p) for p in inputs], named_channels)
        channels = [read_channel(name, path) for name, path in assigned]
        check_channel_modalities(spec, channels)
        source = channels[0]  # its image and modality, as read_model_input gives them
        further = align_channels(channels)[1:]
    image = source.image
    reporter.update(0.5)
    if not isinstance(model, LoadedModel):
        model = load_model(model, device, models_dir, backend, precision)
    reporter.update(1.0)
    labelmap, labels = segment_image(
        image,
        model,
        device,
        reporter,
        crop_body=crop_body,
        threshold=threshold,
        modality=source.modality,
        allow_modality=allow_modality,
        further=further,
    )
    written, listed = write_result_labelmap(labelmap, labels, output_path, reporter)
    return {
        "event": "result",
        "output": str(written),
        "input": assigned[0][1],
        **({"inputs": dict(assigned)} if len(assigned) > 1 else {}),
        "model": model.spec.id,
        "model_version": model.spec.version,
        "labels": listed,
        "device": str(model.device),
        "backend": model.backend,
        "precision": model.precision,
        "threshold": check_threshold(model.spec, threshold),
        "warnings": warnings,
        "seconds": round(time.perf_counter() - started, 3),
    }
