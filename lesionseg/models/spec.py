"""Model specs: one JSON file per model, validated by ``resources/model-spec.schema.json``.

A spec is data: the network by MONAI name and parameters, preprocessing, sliding window, post-processing,
labels and the weights' source and hashes.  Nothing about a particular model is written in code.

Orientation and the Decathlon quirk
-----------------------------------
``preprocessing.orientation`` is MONAI's ``Orientationd(axcodes=...)``: after reorientation, tensor axis 0
is image axis i and points towards the first letter, and so on.  The network always sees MONAI's tensor
layout ``[batch, channel, i, j, k]``.

``preprocessing.orientation_quirk`` describes weights trained on Medical Segmentation Decathlon images whose
voxels are stored LPS while their header says RAS (Project-MONAI/model-zoo#766).  Such weights learned the
spleen where those headers said right and anterior, so on a correctly oriented image they segment the side
mirrored left-right and front-back:

* ``compensate`` (the built-in spleen spec): after reorienting to ``orientation``, tensor axes 0 and 1 are
  flipped before the network and flipped back after it, so a correctly oriented image (every DICOM series,
  every NIfTI whose header is right) reaches the network as the mislabelled training images did.  Pick this
  for clinical images; it is what a radiologist segmenting DICOM in Slicer needs.
* ``reproduce_monai``: the network gets exactly what the bundle's canonical MONAI pipeline gives it (reorient
  to RAS, nothing more), so our output equals MONAI's for the same file.  Pick this only to reproduce the
  bundle on the Decathlon Task09 NIfTI files (or others written the same way), where it is right because the
  file carries the same mislabelling; on correctly oriented images it lands on the mirrored side.
* ``none``: the weights carry no such quirk (computed like ``reproduce_monai``; the value documents the fact).

Defaults and retired fields
---------------------------
Each optional field's default is written once, as the default of its dataclass field below; the schema's
``default`` annotations repeat them for readers and a test keeps the two equal.  The sliding-window defaults
are those of MONAI's ``SlidingWindowInferer``, so a MONAI bundle whose inferer leaves them out runs as MONAI
runs it.

``task``, ``preprocessing.interpolation`` and ``inference.activation`` are retired: each allowed one value
(``segmentation``, ``bilinear``, ``softmax``), which is what the engine always does, and nothing read them.
Specs written before keep loading: the fields are still accepted with those values and silently ignored
(:data:`RETIRED_FIELDS`), and new specs leave them out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from lesionseg.labels import LabelInfo

SCHEMA_RESOURCE = "model-spec.schema.json"
NETWORK_NAMES = ("UNet", "SegResNet", "UNETR", "DynUNet", "BasicUNet")
# Fields older specs carry that stated the only thing the engine does; accepted by the schema, then ignored.
RETIRED_FIELDS = ("task", "preprocessing/interpolation", "inference/activation")
# Fraction of a sliding window shared with its neighbour (MONAI's SlidingWindowInferer default); training
# validates with it too, so a trained model's spec carries it.
DEFAULT_OVERLAP = 0.25


@cache
def spec_schema() -> dict[str, Any]:
    """The JSON schema every spec must satisfy."""
    text = resources.files("lesionseg.resources").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    return json.loads(text)


@dataclass(frozen=True)
class IntensitySpec:
    kind: str  # "range" or "zscore"
    a_min: float = 0.0
    a_max: float = 1.0
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = False
    nonzero: bool = False


@dataclass(frozen=True)
class PreprocessSpec:
    orientation: str
    spacing: tuple[float, float, float] | None
    intensity: IntensitySpec
    orientation_quirk: str = "none"
    # (low, high) HU windows: the image becomes one network channel per window, in place of ``intensity``.
    windows: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class InferenceSpec:
    roi_size: tuple[int, int, int]
    overlap: float = DEFAULT_OVERLAP
    sw_batch_size: int = 1
    blend: str = "constant"
    flip_tta: bool = False
    # ``segment --uncertainty tta``: the flips after the unflipped pass, each the network axes (of i, j, k) mirrored
    # together; one member per flip. Only flips the network was trained with: by default none (one pass), because
    # a network that never saw mirrored images can be wrong on them (the demo spleen model finds 0.3 mL of a
    # 167 mL spleen in the mean over i, j and k flips, and 98 mL unflipped).
    tta: tuple[str, ...] = ()
    amp: bool = True
    precision: str = "fp32"  # the CPU network through OpenVINO: fp32 or bf16
    threshold: float | None = None  # foreground probability cut for one-label models; None: argmax


@dataclass(frozen=True)
class PostprocessSpec:
    keep_largest_component: bool = False
    min_component_mm3: float = 0.0
    fill_holes: bool = False


@dataclass(frozen=True)
class WeightsSpec:
    format: str
    path: str
    url: str | None = None
    sha256: str | None = None
    md5: str | None = None
    archive: str | None = None
    member: str | None = None


@dataclass(frozen=True)
class CascadeSpec:
    coarse_model: str  # folder of the coarse stage, relative to the spec's folder
    margin_mm: float


@dataclass(frozen=True)
class InputSpec:
    """One input channel of a multi-channel model (spec ``inputs``), in the network's channel order."""

    name: str
    modality: str | None = None  # None: the spec's modality


@dataclass(frozen=True)
class ModelSpec:
    id: str
    version: str
    network_name: str
    network_parameters: dict[str, Any]
    input_channels: int
    preprocessing: PreprocessSpec
    inference: InferenceSpec
    postprocessing: PostprocessSpec
    labels: tuple[LabelInfo, ...]
    weights: WeightsSpec
    description: str = ""
    intended_use: str = ""
    license: str = ""
    demo: bool = False  # trained on synthetic phantoms: never preselected, listed last
    lesion_labels: tuple[int, ...] = ()
    cascade: CascadeSpec | None = None
    # DICOM Modality of the training images (for every input channel that ``inputs`` does not give one; None: any).
    # Callers ask expected_modality(channel), so per-channel inputs need no change there.
    modality: str | None = None
    inputs: tuple[InputSpec, ...] = ()  # empty: one unnamed channel per input_channels (the single-image models)
    folder: Path | None = None  # where the weights file lives (None: not installed anywhere yet)
    builtin: bool = False
    source: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def weights_path(self) -> Path | None:
        return None if self.folder is None else self.folder / self.weights.path

    @property
    def coarse_folder(self) -> Path | None:
        """The cascade's coarse-stage folder, or None for a one-step model."""
        if self.cascade is None:
            return None
        if self.folder is None:
            raise ValueError(f"model {self.id!r} is a cascade but has no folder to find its coarse stage in")
        return self.folder / self.cascade.coarse_model

    def coarse_spec(self) -> "ModelSpec | None":
        """The cascade's coarse stage (itself a one-step model), or None for a one-step model."""
        folder = self.coarse_folder
        if folder is None:
            return None
        if not (folder / "spec.json").is_file():
            raise ValueError(
                f"model {self.id!r} is a cascade whose coarse stage {self.cascade.coarse_model!r} has no spec.json "
                f"in {self.folder}; copy the whole model folder, stage folders included"
            )
        coarse = load_spec(folder / "spec.json")
        if coarse.cascade is not None:
            raise ValueError(f"model {self.id!r}: its coarse stage {coarse.id!r} is itself a cascade; use one level")
        return coarse

    @property
    def num_classes(self) -> int:
        return int(self.network_parameters.get("out_channels", max(label.value for label in self.labels) + 1))

    def expected_modality(self, channel: int = 0) -> str | None:
        """The DICOM Modality the model expects on input ``channel`` (None: not stated, anything goes)."""
        if not 0 <= channel < self.input_channels:
            raise IndexError(f"model {self.id!r} has {self.input_channels} input channel(s), not {channel + 1}")
        if self.inputs and self.inputs[channel].modality is not None:
            return self.inputs[channel].modality
        return self.modality

    @property
    def channel_names(self) -> list[str]:
        """The input channels' names in order (``image`` for a single-channel model that names none)."""
        if self.inputs:
            return [each.name for each in self.inputs]
        return ["image"] if self.input_channels == 1 else [f"channel{c}" for c in range(self.input_channels)]

    def with_folder(self, folder: Path | None) -> "ModelSpec":
        return replace(self, folder=None if folder is None else Path(folder))


def check_probability(threshold: float) -> None:
    """Refuse a threshold that is not a probability, before any work is done."""
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(
            f"threshold {threshold} is not a probability strictly between 0 and 1; "
            "give e.g. 0.3 to find more (and less certain) regions, or 0.7 for fewer"
        )


def check_threshold(spec: ModelSpec, threshold: float | None) -> float | None:
    """The probability cut to use: ``threshold`` if given, else the spec's; None means the argmax."""
    if threshold is None:
        return spec.inference.threshold
    check_probability(threshold)
    if spec.num_classes != 2:
        raise ValueError(
            f"model {spec.id!r} has {spec.num_classes - 1} foreground labels; a threshold applies only to models "
            "with one foreground label, so leave it out for this model"
        )
    return float(threshold)


def validate_spec_dict(data: Any, where: str = "model spec") -> None:
    """Raise ValueError naming the offending field when ``data`` breaks the schema or its own labels."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(spec_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        location = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ValueError(f"{where}: invalid at {location}: {error.message}; see lesionseg/resources/{SCHEMA_RESOURCE}")
    values = [label["value"] for label in data["labels"]]
    if len(set(values)) != len(values):
        raise ValueError(f"{where}: label values repeat ({values}); give each label its own value")
    out_channels = data["network"]["parameters"].get("out_channels")
    if out_channels is not None and max(values) >= int(out_channels):
        raise ValueError(
            f"{where}: label value {max(values)} needs at least {max(values) + 1} network output channels, "
            f"but out_channels is {out_channels}"
        )
    stray = sorted(set(data.get("lesion_labels", [])) - set(values))
    if stray:
        raise ValueError(f"{where}: lesion_labels {stray} are not among the label values {values}; fix lesion_labels")
    channels = int(out_channels) if out_channels is not None else max(values) + 1
    if data["inference"].get("threshold") is not None and channels != 2:
        raise ValueError(
            f"{where}: inference.threshold needs a model with one foreground label, but this one has "
            f"{channels - 1}; remove inference.threshold (such models take the most probable label)"
        )
    windows = data["preprocessing"].get("windows", [])
    if windows and int(data["input_channels"]) != 1:
        raise ValueError(
            f"{where}: preprocessing.windows splits one CT image into channels, but input_channels is "
            f"{data['input_channels']}; give input_channels 1 (the image) or no windows"
        )
    bad = [pair for pair in windows if not pair[0] < pair[1]]
    if bad:
        raise ValueError(f"{where}: preprocessing.windows {bad[0]} has low not below high")
    in_channels = data["network"]["parameters"].get("in_channels")
    fed = int(data["input_channels"]) * max(1, len(windows))
    if in_channels is not None and int(in_channels) != fed:
        what = f"{len(windows)} windows of 1 image" if windows else f"input_channels {data['input_channels']}"
        raise ValueError(f"{where}: {what} give {fed} network channels, but the network's in_channels is {in_channels}")
    inputs = data.get("inputs")
    if inputs is not None:
        if len(inputs) != int(data["input_channels"]):
            raise ValueError(
                f"{where}: inputs names {len(inputs)} channel(s) but input_channels is {data['input_channels']}; "
                "give one inputs entry per network input channel"
            )
        names = [each["name"].casefold() for each in inputs]
        if len(set(names)) != len(names):
            raise ValueError(f"{where}: inputs names repeat ({[each['name'] for each in inputs]}); name each once")


def _given(data: Mapping[str, Any], convert: Mapping[str, Callable[[Any], Any]]) -> dict[str, Any]:
    """The fields ``data`` gives, converted; the dataclass defaults stand for the others."""
    return {name: to(data[name]) for name, to in convert.items() if name in data}


def _windows(value: Any) -> tuple[tuple[float, float], ...]:
    return tuple((float(lo), float(hi)) for lo, hi in value)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def spec_from_dict(data: dict[str, Any], folder: Path | None = None, where: str = "model spec") -> ModelSpec:
    """Validate and convert a spec dictionary."""
    validate_spec_dict(data, where)
    pre = data["preprocessing"]
    infer = data["inference"]
    cascade = data.get("cascade")
    lesion_labels = {int(v) for v in data.get("lesion_labels", [])}
    # A spec that names its lesion labels decides for every label; an older one leaves it to the label's name.
    stated = "lesion_labels" in data
    return ModelSpec(
        id=data["id"],
        version=data["version"],
        network_name=data["network"]["name"],
        network_parameters=dict(data["network"]["parameters"]),
        input_channels=int(data["input_channels"]),
        inputs=tuple(InputSpec(str(each["name"]), each.get("modality")) for each in data.get("inputs", [])),
        preprocessing=PreprocessSpec(
            orientation=pre["orientation"],
            spacing=None if pre["spacing"] is None else tuple(float(s) for s in pre["spacing"]),
            intensity=IntensitySpec(**pre["intensity"]),
            **_given(pre, {"orientation_quirk": str, "windows": _windows}),
        ),
        inference=InferenceSpec(
            roi_size=tuple(int(r) for r in infer["roi_size"]),
            **_given(
                infer,
                {
                    "overlap": float,
                    "sw_batch_size": int,
                    "blend": str,
                    "flip_tta": bool,
                    "tta": lambda flips: tuple(str(each) for each in flips),
                    "amp": bool,
                    "precision": str,
                    "threshold": _optional_float,
                },
            ),
        ),
        postprocessing=PostprocessSpec(
            **_given(
                data.get("postprocessing", {}),
                {"keep_largest_component": bool, "min_component_mm3": float, "fill_holes": bool},
            )
        ),
        labels=tuple(
            LabelInfo.from_dict(label, is_lesion=int(label["value"]) in lesion_labels if stated else None)
            for label in data["labels"]
        ),
        weights=WeightsSpec(**{k: v for k, v in data["weights"].items() if k != "note"}),
        lesion_labels=tuple(int(v) for v in data.get("lesion_labels", [])),
        cascade=CascadeSpec(str(cascade["coarse_model"]), float(cascade["margin_mm"])) if cascade else None,
        folder=folder,
        source=data,
        **_given(data, {"description": str, "intended_use": str, "license": str, "demo": bool, "modality": str}),
    )


def load_spec(path: str | Path, folder: Path | None = None) -> ModelSpec:
    """Read a spec file; its weights are looked for in ``folder`` (default: the spec's own folder)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); fix the file or restore it") from error
    return spec_from_dict(data, folder=path.parent if folder is None else folder, where=str(path))
