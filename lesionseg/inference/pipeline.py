"""``segment_image``: an engine image in, a labelmap on exactly the same grid out.

The steps reproduce a MONAI bundle's canonical inference (LoadImage → Orientation → Spacing →
ScaleIntensityRange → SlidingWindowInferer → softmax → Invertd → argmax) with the same sampling points:

1. a :class:`~lesionseg.inference.plan.NetworkPlan` takes the image to the network's input: reoriented to the
   spec's axcodes as MONAI does, resampled onto the spec's spacing, intensities scaled, optionally cropped to the
   body, mirrored for the Decathlon quirk when the spec compensates it;
2. sliding window (:mod:`.window`), softmax of the stitched logits;
3. the plan takes the probabilities back the same way in reverse, onto the input's grid, where each voxel
   takes the argmax (or, for a model with one foreground label and a threshold, is foreground where its
   probability exceeds it);
4. post-process (largest component, minimum volume, holes).

The threshold is checked once, where a run enters: :func:`segment_file` (the command line and the worker) or
:func:`segment_image`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lesionseg.image import Image
from lesionseg.inference.crop import body_box_world, box_on_grid, region_around_labels
from lesionseg.inference.devices import free_memory_bytes, host_memory, resolve_device, subnormals_flushed
from lesionseg.inference.memory import MemoryPlan, check_memory_plan, plan_memory
from lesionseg.inference.plan import NetworkPlan
from lesionseg.inference.postprocess import postprocess
from lesionseg.inference.progress import EventSink, Progress, recording_warnings
from lesionseg.inference.validity import check_model_input, read_model_input
from lesionseg.inference.window import Stitched, count_windows, sliding_window
from lesionseg.labels import LabelInfo
from lesionseg.models.network import load_network
from lesionseg.models.spec import IntensitySpec, ModelSpec, check_threshold
from lesionseg.models.weights import verify_weights

log = logging.getLogger(__name__)
CROP_MARGIN_MM = 20.0


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


def _plan_memory(plan: NetworkPlan, model: LoadedModel, crop_body: bool, further: Sequence[Image] = ()) -> MemoryPlan:
    """Where the run's big tensors live and its window batch; refuses, before any work, a run that cannot fit."""
    inf, device = model.spec.inference, model.device
    windows = model.spec.preprocessing.windows
    host = host_memory()
    memory = plan_memory(
        int(np.prod(plan.grid.size)),
        model.spec.num_classes,
        inf.roi_size,
        inf.sw_batch_size,
        device.type,
        free_memory_bytes(device) if device.type == "cuda" else 0,
        host.available_bytes,
        input_voxels=int(np.prod(plan.reoriented.size)),
        amp=inf.amp,
        input_itemsize=plan.reoriented.array.dtype.itemsize,
        first_pass_voxels=plan.first_pass_voxels,
        network_channels=len(windows) if windows else 1 + len(further),
        further_input_bytes=sum(int(image.array.nbytes) for image in further),
    )
    check_memory_plan(memory, host, device.type, crop_body)
    return memory


def _channel_scaling(
    intensity: IntensitySpec, windows: Sequence[tuple[float, float]] = ()
) -> Callable[[Any, int], Any]:
    """Each channel's intensity scaling: the spec's for the first, ``channels.channel_intensity``'s for the others;
    with ``windows``, the one image becomes one network channel per window (``channels.window_channels``)."""

    def scale(volume, channel: int):
        if windows:
            from lesionseg.inference.channels import window_channels

            return window_channels(volume, windows)
        if channel == 0:
            return _scale_intensity(volume, intensity)
        from lesionseg.inference.channels import channel_intensity

        return _scale_intensity(volume, IntensitySpec(**channel_intensity(asdict(intensity), channel)))

    return scale


def _crop_to_body(plan: NetworkPlan, progress: Progress) -> NetworkPlan:
    corners = body_box_world(plan.source)
    if corners is None:
        progress.warning("--crop-body found no body (nothing above -500 HU); segmenting the whole volume")
        return plan
    region = box_on_grid(corners, plan.grid, CROP_MARGIN_MM)
    progress.message(f"body crop: {[int(s.stop - s.start) for s in region][::-1]} of {list(plan.grid.size)} voxels")
    return plan.cropped(region)


def _run_windows(
    network_input,
    model: LoadedModel,
    memory: MemoryPlan,
    stitch_device,
    progress: Progress,
    flip: str = "",
    member: tuple[int, int] = (0, 1),
) -> Stitched:
    """The stitched logits; ``flip`` and ``member`` (index, members) for one pass of test-time augmentation."""
    inf, device = model.spec.inference, model.device
    index, members = member
    windows = count_windows(tuple(network_input.shape[1:][::-1]), inf.roi_size, inf.overlap)
    on = f"{device}" if model.backend == "torch" else f"{device} through OpenVINO ({model.precision})"
    if index == 0:
        progress.message(f"{windows} windows of {list(inf.roi_size)} voxels, batch {memory.sw_batch_size}, on {on}")

    def report(done: int, total: int) -> None:
        # The last window of a pass is always reported, however soon it comes after the last event: a fast run
        # would otherwise send no window count at all.
        last = done == total
        if members == 1:
            progress.update(done / total, force=last, windows_done=done, windows_total=total)
        else:
            figures = dict(windows_done=done, windows_total=total, tta_pass=index + 1, tta_passes=members)
            progress.update((index + done / total) / members, force=last, **figures)

    stitched = sliding_window(
        network_input,
        model.network,
        inf.roi_size,
        model.spec.num_classes,
        overlap=inf.overlap,
        sw_batch_size=memory.sw_batch_size,
        blend=inf.blend,
        device=device,
        stitch_device=stitch_device,
        amp=inf.amp,
        flip_tta=inf.flip_tta and members == 1,  # TTA members are the flips themselves
        progress=report,
        flip=flip,
    )
    if stitched.computed < stitched.windows and index == 0:
        reused = stitched.windows - stitched.computed
        progress.message(f"{reused} windows of constant input reused one computed prediction")
    return stitched


def _class_scores(probabilities, threshold: float | None) -> tuple[Any, list[float], Callable[[Any], Any]]:
    """What :meth:`NetworkPlan.to_input` resamples, its value outside a crop (per channel), and its labels."""
    classes = probabilities.shape[0]
    if classes != 2:
        return probabilities, [1.0] + [0.0] * (classes - 1), lambda slab: slab.argmax(dim=0)
    # Linear interpolation commutes with p1 - p0, so its sign after inversion is MONAI's argmax; and p1 - p0 is
    # 2 p1 - 1, so "p1 > t" is "p1 - p0 > 2t - 1" (interpolation keeps this exact).  Outside a crop: -1, background.
    cut = 0.0 if threshold is None else 2.0 * threshold - 1.0
    return (probabilities[1] - probabilities[0])[None], [-1.0], lambda slab: slab[0] > cut


def prepare_network_input(
    image: Image, model: LoadedModel, progress: Progress, crop_body: bool, further: Sequence[Image] = ()
) -> tuple[NetworkPlan, MemoryPlan, Any, Any]:
    """The ``preprocess`` stage: the plan, the memory plan, the device the volumes live on, the network's input."""
    import torch

    progress.stage("preprocess")
    plan = NetworkPlan.for_image(image, model.spec.preprocessing)
    memory = _plan_memory(plan, model, crop_body, further)
    if memory.note:
        progress.message(memory.note)
    volume_device = model.device if memory.stitch_on_device else torch.device("cpu")
    progress.update(0.3)
    if crop_body:
        plan = _crop_to_body(plan, progress)
    scaling = _channel_scaling(model.spec.preprocessing.intensity, model.spec.preprocessing.windows)
    network_input = plan.to_network(volume_device, scaling, further)
    progress.update(0.8)
    return plan, memory, volume_device, network_input


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

    ``threshold`` (one-foreground-label models only, already checked): foreground where its probability exceeds
    it, instead of the argmax; None: the argmax.
    """
    import torch

    plan, memory, volume_device, network_input = prepare_network_input(image, model, progress, crop_body, further)
    progress.stage("inference")
    stitched = _run_windows(network_input, model, memory, volume_device, progress)
    del network_input
    progress.stage("postprocess")
    # Each step lets go of the tensor before it: the logits and probabilities are the run's largest.
    logits = plan.from_network(stitched.logits)
    del stitched
    probabilities = torch.softmax(logits, dim=0)
    del logits
    scores, outside, decide = _class_scores(probabilities, threshold)
    del probabilities
    return plan.to_input(scores, outside, decide, lambda fraction: progress.update(0.8 * fraction))


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
    threshold = check_threshold(model.spec, threshold)  # before any inference, a cascade's coarse pass included
    return _segment_loaded(image, model, reporter, crop_body, threshold, modality, allow_modality, further)


def _segment_loaded(
    image: Image,
    model: LoadedModel,
    reporter: Progress,
    crop_body: bool,
    threshold: float | None,
    modality: str | None,
    allow_modality: str | None,
    further: Sequence[Image] = (),
) -> tuple[Image, list[LabelInfo]]:
    """``segment_image`` once the model is loaded and ``threshold`` checked (by ``check_threshold``)."""
    check_run(image, model, reporter, modality, allow_modality, further)
    with subnormals_flushed(model.device):
        if model.coarse is None:
            labelmap = predict_labelmap(image, model, reporter, crop_body, threshold, further)
        else:
            labelmap = _predict_two_steps(image, model, reporter, crop_body, threshold)
    labelmap = postprocess(labelmap, model.spec.postprocessing)
    reporter.update(1.0)
    return labelmap, list(model.spec.labels)


def check_run(
    image: Image,
    model: LoadedModel,
    reporter: Progress,
    modality: str | None,
    allow_modality: str | None,
    further: Sequence[Image] = (),
) -> None:
    """Refuse input the model cannot take, and report what the user must know before its result."""
    check_channel_count(model.spec, 1 + len(further))
    stages = () if model.coarse is None else (model.coarse.spec,)
    for text in check_model_input(image, model.spec, modality, allow_modality, window_specs=stages):
        reporter.warning(text)
    if not model.weights_verified:
        reporter.warning(f"model {model.spec.id!r}: its weights have no hash to check against (unverified)")
    for note in model.notes:
        reporter.message(note)


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

    coarse_cut = coarse_model.spec.inference.threshold  # checked with its spec
    coarse = predict_labelmap(image, coarse_model, Progress(forward), crop_body=crop_body, threshold=coarse_cut)
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
    uncertainty: str = "none",
) -> dict[str, Any]:
    """Read an image (file or DICOM folder), segment it, write the labelmap atomically; returns the result event.

    ``uncertainty="tta"`` runs flip test-time augmentation and writes its volumes and lesion table beside the
    labelmap (:mod:`lesionseg.inference.uncertainty`); the result event's ``uncertainty`` lists them and the cost.

    A multi-channel model takes ``input_path`` as one path per channel in its spec's order, or ``named_channels``
    as ``NAME=PATH``; further channels are resampled onto the first one's grid, which the labelmap lies on.

    The result event's ``warnings`` repeats every warning event of the run, so a caller that keeps only
    the result still sees that, for instance, the input did not look like CT.
    """
    import time

    from lesionseg.inference.output import labelmap_format, write_result_labelmap

    started = time.perf_counter()
    labelmap_format(output_path)  # refuse a bad output name or threshold before any work
    if uncertainty != "none":
        from lesionseg.inference.uncertainty import check_uncertainty

        check_uncertainty(uncertainty)
    spec = model.spec if isinstance(model, LoadedModel) else resolve_spec(model, models_dir)
    threshold = check_threshold(spec, threshold)
    reporter, warnings = recording_warnings(progress)
    reporter.stage("load")
    inputs = [input_path] if isinstance(input_path, (str, Path)) else list(input_path)
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
        model = load_model(spec, device, models_dir, backend, precision)
    reporter.update(1.0)
    extra: dict[str, Any] = {}
    if uncertainty == "none":
        labelmap, labels = _segment_loaded(
            image, model, reporter, crop_body, threshold, source.modality, allow_modality, further
        )
    else:
        from lesionseg.inference.uncertainty import one_pass_note, segment_uncertain, write_uncertainty

        uncertain = segment_uncertain(
            image, model, reporter, crop_body, threshold, source.modality, allow_modality, further
        )
        labelmap, labels = uncertain.labelmap, list(model.spec.labels)
        about = {"model": model.spec.id, "model_version": model.spec.version, "input": assigned[0][1]}
        note = one_pass_note(model.spec)
        if note:
            about["note"] = note
            reporter.message(note)
        extra["uncertainty"] = write_uncertainty(uncertain, output_path, about)
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
        "threshold": threshold,
        "warnings": warnings,
        **extra,
        "seconds": round(time.perf_counter() - started, 3),
    }
