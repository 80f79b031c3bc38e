"""Training configs: data in YAML or JSON (or a built-in preset name), checked key by key.

Every key has a default here; a config file only states what it changes.  An unknown key or a
value of the wrong kind is an error that names the key and what is allowed, never silently ignored.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any

from lesionseg.models.spec import DEFAULT_OVERLAP

PRESET_PACKAGE = "lesionseg.resources.training"
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")

log = logging.getLogger(__name__)

NETWORKS = ("UNet", "SegResNet", "UNETR", "DynUNet")
LOSSES = ("Dice", "DiceCE", "DiceFocal")
OPTIMIZERS = ("Adam", "AdamW", "SGD", "Novograd")
SCHEDULES = ("none", "cosine_warm_restarts", "step", "poly")
INTENSITY_KINDS = ("range", "zscore")

DEFAULTS: dict[str, Any] = {
    "model": {"id": "", "version": "1.0.0", "description": ""},
    "network": {
        "name": "UNet",
        # 2D slices through a 3D network whose kernels and strides span only the first two axes;
        # its patches are one slice deep, so the same 3D inference code runs it.
        "slice_mode": False,
        "channels": [16, 32, 64, 128, 256],
        "strides": [2, 2, 2, 2],
        "num_res_units": 2,
        "norm": "batch",
        "dropout": 0.0,
        # DynUNet only: extra output heads at this many coarser decoder levels, trained with weights halving
        # per level (MONAI's DeepSupervisionLoss); inference uses the full-resolution head alone.  0: none.
        "deep_supervision": 0,
        "parameters": {},
    },
    "preprocessing": {
        "orientation": "RAS",
        "spacing": [1.5, 1.5, 2.0],
        "intensity": {"kind": "range", "a_min": -57.0, "a_max": 164.0, "b_min": 0.0, "b_max": 1.0, "clip": True},
        # > 0: train on the box around the labels plus this margin (a cascade's refinement stage).
        "crop_to_label_mm": 0.0,
        # [[lo, hi], ...] in HU: one CT image becomes one network channel per window, each scaled to 0..1 and
        # clipped (e.g. bone -200..1500 and soft tissue -150..250), in place of ``intensity``; [] keeps one channel.
        "windows": [],
    },
    "cascade": {
        "coarse_factor": 2.0,  # stage 1 works on voxels this many times larger than preprocessing.spacing
        "margin_mm": 20.0,  # stage 2 sees stage 1's region plus this margin
    },
    "augmentation": {
        "patch_size": [96, 96, 96],
        "samples_per_volume": 4,
        "positive": 1.0,
        "negative": 1.0,
        "flip_prob": 0.5,
        "rotate_prob": 0.0,
        "rotate_degrees": 15.0,
        "scale_prob": 0.0,
        "scale_range": 0.1,
        "intensity_shift_prob": 0.0,
        "intensity_shift": 0.1,
        # pos_neg: MONAI's RandCropByPosNegLabeld with ``positive``:``negative`` crops centred on foreground
        # and background; label_classes: RandCropByLabelClassesd, crops centred on each label value in
        # proportion to ``class_ratios`` (one per value, background first; [] is equal), so lesion kinds
        # held as separate labels are sampled alike; components: ``positive``:``negative`` crops centred on a
        # connected piece of a label (each piece equally likely, whatever its size) and on background.
        "sampling": "pos_neg",
        "class_ratios": [],
    },
    "loss": {"name": "DiceCE", "include_background": False, "focal_gamma": 2.0},
    "optimizer": {"name": "Adam", "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.9},
    "schedule": {
        "name": "none",
        "restart_epochs": 10,
        "restart_mult": 1,
        "min_lr": 0.0,
        "step_epochs": 30,
        "gamma": 0.1,
        "power": 0.9,
    },
    "training": {
        "epochs": 100,
        "batch_size": 2,
        "iterations_per_epoch": 0,  # 0: one pass over the training volumes
        "amp": True,
        "cache_rate": 1.0,
        "seed": 0,
        "deterministic": False,  # True: cuDNN's deterministic kernels (slower on GPU; CPU runs are repeatable anyway)
        "validation_fraction": 0.2,  # used when dataset.json holds no split
        # True: train only on cases holding a lesion label (dataset.json lesion_labels); validation keeps them all.
        "exclude_lesion_free": False,
        "tensorboard": False,  # True: also write TensorBoard logs to OUTPUT/tensorboard (needs the package)
    },
    "validation": {
        "interval": 1,
        "overlap": DEFAULT_OVERLAP,
        "sw_batch_size": 4,
        "early_stopping_patience": 0,  # validations without improvement before stopping; 0: never
        "stop_at_dice": 0.0,  # stop once the mean validation Dice reaches this; 0: never
        # What picks the best checkpoint: "case_mean" averages per-case Dice (a lesion-free case scores 1
        # only when nothing is predicted); "pooled" sums overlaps over all validation voxels first, which
        # does not reward predicting nothing when many cases are lesion-free.
        "select": "case_mean",
    },
}

# Keys whose value is free-form (passed on to MONAI) and so is not checked against DEFAULTS.
FREE_FORM = {("network", "parameters")}
CHOICES = {
    ("network", "name"): NETWORKS,
    ("network", "norm"): ("batch", "instance", "none"),
    ("loss", "name"): LOSSES,
    ("optimizer", "name"): OPTIMIZERS,
    ("schedule", "name"): SCHEDULES,
    ("validation", "select"): ("case_mean", "pooled"),
    ("augmentation", "sampling"): ("pos_neg", "label_classes", "components"),
}


def presets() -> list[str]:
    folder = resources.files(PRESET_PACKAGE)
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _parse_text(text: str, where: str) -> Any:
    if where.endswith(".json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not valid JSON ({error})") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"{where}: not valid YAML ({error})") from None


def config_file(source: str | Path) -> Path | None:
    """``source`` as a config file path, or None when it names a preset.

    A ``Path`` is a path.  Text is a path only when it looks like one (it holds a folder separator or
    ends in .yaml, .yml or .json), so that a file called ``tiny`` in the working folder never replaces
    the preset of that name.
    """
    if isinstance(source, Path):
        return source
    text = str(source)
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    if any(sep in text for sep in separators) or text.lower().endswith(CONFIG_SUFFIXES):
        return Path(text)
    return None


def read_config_source(source: str | Path) -> dict[str, Any]:
    """The raw mapping from a file path or a preset name (see :func:`config_file` for which is which)."""
    path = config_file(source)
    if path is not None:
        if not path.is_file():
            raise FileNotFoundError(
                f"no config file {path}; give a YAML/JSON file or a preset ({', '.join(presets())})"
            )
        data = _parse_text(path.read_text(encoding="utf-8"), str(path))
    elif str(source) in presets():
        if Path(source).exists():
            log.warning("config %s: using the preset %s, not the file of that name here (write ./%s for it)",
                        source, source, source)  # fmt: skip
        text = resources.files(PRESET_PACKAGE).joinpath(f"{source}.yaml").read_text(encoding="utf-8")
        data = _parse_text(text, f"preset {source}")
    elif Path(source).exists():
        raise ValueError(
            f"config {str(source)!r} is not a preset ({', '.join(presets())}); to use the file of that name, "
            f"write it as a path: ./{source}"
        )
    else:
        raise ValueError(f"unknown config {str(source)!r}: not a file and not a preset ({', '.join(presets())})")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"config {source}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "null"


def _merge(default: Any, given: Any, path: tuple[str, ...]) -> Any:
    name = ".".join(path)
    if path in FREE_FORM:
        if not isinstance(given, dict):
            raise ValueError(f"config {name}: must be a mapping of extra network arguments")
        return copy.deepcopy(given)
    if path == ("preprocessing", "intensity"):
        return _intensity(given)
    if path == ("preprocessing", "spacing") and given is None:
        return None
    if path == ("preprocessing", "windows"):
        return check_windows(given, "config preprocessing.windows")
    if isinstance(default, dict):
        if not isinstance(given, dict):
            raise ValueError(f"config {name}: must be a mapping, got {_kind(given)}")
        unknown = sorted(set(given) - set(default))
        if unknown:
            raise ValueError(f"config {name or '(top level)'}: unknown key(s) {unknown}; allowed: {sorted(default)}")
        out = copy.deepcopy(default)
        for key, value in given.items():
            out[key] = _merge(default[key], value, (*path, key))
        return out
    if isinstance(default, bool) != isinstance(given, bool) or _kind(default) != _kind(given):
        raise ValueError(f"config {name}: must be {_kind(default)}, got {given!r}")
    if path in CHOICES and given not in CHOICES[path]:
        raise ValueError(f"config {name}: {given!r} is not one of {', '.join(CHOICES[path])}")
    if isinstance(default, list) and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in given):
        raise ValueError(f"config {name}: must be a list of numbers, got {given!r}")
    return copy.deepcopy(given)


def check_windows(given: Any, where: str) -> list[list[float]]:
    """``[[lo, hi], ...]`` intensity windows (lo < hi), or [] for none; anything else is refused naming ``where``."""
    shape = "a list of [low, high] pairs, e.g. [[-200, 1500], [-150, 250]] (bone and soft tissue), or []"
    if not isinstance(given, list):
        raise ValueError(f"{where}: must be {shape}, got {given!r}")
    out = []
    for pair in given:
        numbers = isinstance(pair, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)
        if not numbers or len(pair) != 2:
            raise ValueError(f"{where}: must be {shape}; {pair!r} is not a [low, high] pair")
        if not pair[0] < pair[1]:
            raise ValueError(f"{where}: window {pair!r} has low {pair[0]} not below high {pair[1]}")
        out.append([float(pair[0]), float(pair[1])])
    if len(out) == 1:
        raise ValueError(f"{where}: one window is preprocessing.intensity's range; give two or more, or []")
    return out


def _intensity(given: Any) -> dict[str, Any]:
    if not isinstance(given, dict) or given.get("kind") not in INTENSITY_KINDS:
        raise ValueError(
            "config preprocessing.intensity: give {kind: range, a_min, a_max, b_min, b_max, clip} "
            "or {kind: zscore, nonzero}"
        )
    allowed = (
        {"kind": "range", "a_min": 0.0, "a_max": 1.0, "b_min": 0.0, "b_max": 1.0, "clip": True}
        if given["kind"] == "range"
        else {"kind": "zscore", "nonzero": False}
    )
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(
            f"config preprocessing.intensity ({given['kind']}): unknown key(s) {unknown}; allowed {sorted(allowed)}"
        )
    if given["kind"] == "range" and not {"a_min", "a_max"} <= set(given):
        raise ValueError("config preprocessing.intensity: kind range needs a_min and a_max (the HU window)")
    out = dict(allowed)
    for key, value in given.items():
        if key != "kind" and _kind(value) != _kind(allowed[key]):
            raise ValueError(f"config preprocessing.intensity.{key}: must be {_kind(allowed[key])}, got {value!r}")
        out[key] = value
    return out


def _check_semantics(config: dict[str, Any]) -> None:
    net, aug, train = config["network"], config["augmentation"], config["training"]
    if len(aug["patch_size"]) != 3 or any(int(v) != v or v < 1 for v in aug["patch_size"]):
        raise ValueError(f"config augmentation.patch_size: three positive integers, got {aug['patch_size']}")
    spacing = config["preprocessing"]["spacing"]
    if spacing is not None and (len(spacing) != 3 or any(v <= 0 for v in spacing)):
        raise ValueError(f"config preprocessing.spacing: three positive mm values or null, got {spacing}")
    code = config["preprocessing"]["orientation"]
    if (
        sorted(code) != sorted(set(code))
        or len(code) != 3
        or not all(any(c in pair for c in code) for pair in ("LR", "PA", "SI"))
    ):
        raise ValueError(f"config preprocessing.orientation: {code!r} is not an axis code such as RAS or LPS")
    if net["name"] in ("UNet",) and len(net["strides"]) != len(net["channels"]) - 1:
        raise ValueError(
            f"config network: UNet needs one stride fewer than channels ({len(net['channels'])} channels, "
            f"{len(net['strides'])} strides)"
        )
    if net["slice_mode"]:
        if net["name"] not in ("UNet", "DynUNet"):
            raise ValueError("config network.slice_mode: only UNet and DynUNet can run on slices")
        if aug["patch_size"][2] != 1:
            raise ValueError(f"config: slice_mode needs patch_size [H, W, 1], got {aug['patch_size']}")
    heads = net["deep_supervision"]
    if heads and (net["name"] != "DynUNet" or int(heads) != heads or not 0 < heads < len(net["strides"]) - 1):
        raise ValueError(
            f"config network.deep_supervision: {heads} is not available; DynUNet only, a whole number from 1 "
            f"to its levels minus 2 ({len(net['strides']) - 2} here), or 0 for none"
        )
    factor = 1
    for stride in net["strides"]:
        factor *= stride
    plane = aug["patch_size"][:2] if net["slice_mode"] else aug["patch_size"]
    if net["name"] in ("UNet", "DynUNet") and any(p % factor for p in plane):
        raise ValueError(
            f"config augmentation.patch_size {aug['patch_size']}: each size must be a multiple of {factor} "
            f"(the product of the network strides)"
        )
    if config["preprocessing"]["crop_to_label_mm"] > 0 and spacing is None:
        raise ValueError("config preprocessing.crop_to_label_mm needs preprocessing.spacing (in mm), not null")
    if config["cascade"]["coarse_factor"] < 1 or config["cascade"]["margin_mm"] < 0:
        raise ValueError("config cascade: coarse_factor must be at least 1 and margin_mm at least 0")
    for key in ("epochs", "batch_size"):
        if int(train[key]) != train[key] or train[key] < 1:
            raise ValueError(f"config training.{key}: a positive integer, got {train[key]}")
    if not 0 < config["optimizer"]["lr"] < 10:
        raise ValueError(f"config optimizer.lr: {config['optimizer']['lr']} is not a sensible learning rate")
    if not 0 <= train["cache_rate"] <= 1:
        raise ValueError("config training.cache_rate: a fraction in [0, 1]")
    aug_ratios = aug["class_ratios"]
    if any(v < 0 for v in aug_ratios) or (aug_ratios and sum(aug_ratios) <= 0):
        raise ValueError(f"config augmentation.class_ratios: non-negative numbers, not all 0, got {aug_ratios}")
    if aug_ratios and aug["sampling"] != "label_classes":
        raise ValueError("config augmentation.class_ratios: only used with augmentation.sampling: label_classes")
    if aug["positive"] < 0 or aug["negative"] < 0 or aug["positive"] + aug["negative"] <= 0:
        raise ValueError("config augmentation.positive/negative: non-negative, not both 0")
    if config["validation"]["interval"] < 1:
        raise ValueError("config validation.interval: at least 1 (validate every N epochs)")


def _overlay(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "intensity":
            out[key] = _overlay(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _resolve_base(data: dict[str, Any], folder: Path | None = None, depth: int = 0) -> dict[str, Any]:
    """``base: tiny`` (a preset, or a file beside the config) at the top of a config: start from that config."""
    if "base" not in data:
        return data
    if depth > 4:
        raise ValueError("config base: chains of more than 4 bases (or a loop) are not supported")
    base = data["base"]
    if not isinstance(base, str):
        raise ValueError(f"config base: give a preset name ({', '.join(presets())}) or a config file, got {base!r}")
    source: str | Path = base
    if folder is not None and base not in presets() and not Path(base).is_absolute():
        source = folder / base
    parent = Path(source).parent if isinstance(source, Path) or Path(source).suffix else None
    rest = {k: v for k, v in data.items() if k != "base"}
    return _overlay(_resolve_base(read_config_source(source), parent, depth + 1), rest)


def load_config(source: str | Path | dict[str, Any] | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge a config (file, preset name, or mapping) over the defaults and check it."""
    data = {} if source is None else (copy.deepcopy(source) if isinstance(source, dict) else read_config_source(source))
    path = config_file(source) if isinstance(source, (str, Path)) else None
    folder = path.parent if path is not None and path.is_file() else None
    data = _resolve_base(data, folder)
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".")
        data.setdefault(section, {})[key] = value
    config = _merge(DEFAULTS, data, ())
    _check_semantics(config)
    return config
