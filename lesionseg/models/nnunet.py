"""nnU-Net v2 result folders as LesionSeg models: finding the configuration, loading checkpoints safely, and
building the network from ``plans.json`` without nnU-Net's trainer lookup.

A *trained configuration folder* is ``Dataset*/Trainer__Plans__configuration/`` with ``dataset.json``,
``plans.json`` and ``fold_*/checkpoint_{final,best}.pth``.  The dataset folder above it may hold several.

Why the network is built here: nnU-Net finds the trainer class by importing every trainer module, which imports
timm and torchvision (see requirements/nnunet.txt), and then calls ``pydoc.locate`` on whatever class names
``plans.json`` holds.  Here only classes of ``dynamic_network_architectures.architectures`` and ``torch.nn``
are accepted, so a plans file cannot make LesionSeg import arbitrary code.

Why checkpoints are loaded here: nnU-Net calls ``torch.load(weights_only=False)``, which runs any pickled code.
``load_checkpoint`` uses ``weights_only=True`` and allowlists only the numpy scalar types that nnU-Net's
training log stores (``logging`` and ``_best_ema`` hold numpy float32/float64 scalars).
"""

from __future__ import annotations

import copy
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lesionseg.errors import UserError

CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth")
PREFERRED_CONFIGURATIONS = ("3d_fullres", "3d_cascade_fullres", "2d", "3d_lowres")
_NETWORK_PREFIX = "dynamic_network_architectures.architectures."
_IMPORTABLE_PREFIXES = ("torch.nn.",)
_CHECKPOINT_KEYS = ("network_weights", "trainer_name", "init_args")


class NnunetModelError(UserError):
    """An nnU-Net folder or checkpoint that cannot be used; the message names the file and the fix."""


def split_folder_name(name: str) -> tuple[str, str, str] | None:
    """``Trainer__Plans__configuration`` as (trainer, plans, configuration); None for another name."""
    parts = name.split("__")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 and all(parts) else None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NnunetModelError(
            f"{path.parent}: no {path.name}; an nnU-Net trained configuration folder needs it"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise NnunetModelError(f"{path}: not valid JSON ({error}); copy the file again from the model") from error
    if not isinstance(data, dict):
        raise NnunetModelError(f"{path}: expected a JSON object")
    return data


def is_configuration_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "plans.json").is_file() and (path / "dataset.json").is_file()


def configuration_folders(dataset_folder: str | Path) -> dict[str, Path]:
    """The trained configurations under a dataset folder, by configuration name (``3d_fullres``...)."""
    found: dict[str, Path] = {}
    root = Path(dataset_folder)
    if not root.is_dir():
        return found
    for child in sorted(root.iterdir()):
        parts = split_folder_name(child.name)
        if parts and is_configuration_folder(child):
            found.setdefault(parts[2], child)
    return found


def is_nnunet_folder(path: str | Path) -> bool:
    """True for a trained configuration folder or a dataset folder holding one."""
    path = Path(str(path)).expanduser()
    return is_configuration_folder(path) or bool(configuration_folders(path))


def resolve_configuration_folder(path: str | Path, configuration: str | None = None) -> Path:
    """The trained configuration folder that ``--model PATH [--configuration NAME]`` means."""
    path = Path(str(path)).expanduser()
    if is_configuration_folder(path):
        if configuration is not None:
            parts = split_folder_name(path.name)
            if parts and parts[2] != configuration:
                raise NnunetModelError(
                    f"{path} is the {parts[2]!r} configuration, not {configuration!r}; "
                    "give the dataset folder above it to choose, or leave --configuration out"
                )
        return path
    found = configuration_folders(path)
    if not found:
        raise NnunetModelError(
            f"{path}: not an nnU-Net result folder; give Dataset*/Trainer__Plans__configuration/ (with plans.json, "
            "dataset.json and fold_*/checkpoint_final.pth) or the Dataset folder above it"
        )
    if configuration is not None:
        if configuration not in found:
            raise NnunetModelError(f"{path} has no {configuration!r} configuration; it has {', '.join(sorted(found))}")
        return found[configuration]
    for name in PREFERRED_CONFIGURATIONS:
        if name in found:
            return found[name]
    return found[sorted(found)[0]]


def _allowed_numpy_globals() -> list:
    import numpy as np

    scalar = np._core.multiarray.scalar
    dtypes = [np.dtype, np.dtypes.Float64DType, np.dtypes.Float32DType, np.dtypes.Int64DType, np.dtypes.Int32DType]
    # Checkpoints written under numpy 1.x name the scalar constructor by its old module path.
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), *dtypes]


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents, loaded with ``weights_only=True``; anything beyond tensors, plain types and numpy
    scalars is refused with an error that names it."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise NnunetModelError(f"no checkpoint {path}")
    try:
        with torch.serialization.safe_globals(_allowed_numpy_globals()):
            checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = str(error)
        found = re.search(r"(?:Unsupported global: GLOBAL |unsupported GLOBAL |but got <class ')([\w.]+)", detail)
        what = found.group(1) if found else "an object that is not a tensor or plain value"
        raise NnunetModelError(
            f"{path}: refused to load: it holds {what}, which could run code when loaded. LesionSeg loads "
            "nnU-Net checkpoints with torch.load(weights_only=True) and accepts only tensors, plain values and numpy "
            "scalars; re-save the checkpoint with its network_weights, trainer_name, init_args and "
            "inference_allowed_mirroring_axes only"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        if isinstance(error, OSError) and not isinstance(error, EOFError) and error.errno is not None:
            raise
        raise NnunetModelError(f"{path}: not a readable PyTorch checkpoint ({error}); copy it again") from error
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in _CHECKPOINT_KEYS):
        raise NnunetModelError(
            f"{path}: not an nnU-Net checkpoint (it needs {', '.join(_CHECKPOINT_KEYS)}); "
            "give the checkpoint nnU-Net's training wrote"
        )
    return checkpoint


def _locate(name: str, prefixes: tuple[str, ...], what: str, plans_path: Path) -> Any:
    import importlib

    if not isinstance(name, str) or not name.startswith(prefixes):
        raise NnunetModelError(
            f"{plans_path}: {what} {name!r} is not allowed; LesionSeg builds networks only from "
            f"{' or '.join(p + '*' for p in prefixes)}"
        )
    module_name, _, attribute = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise NnunetModelError(
            f"{plans_path}: {what} {name!r} does not exist in the installed packages ({error}); the model may need a "
            "newer dynamic-network-architectures"
        ) from error


@dataclass
class NnunetConfiguration:
    """One trained configuration: its plans, dataset description and the checkpoints of its folds."""

    folder: Path
    name: str
    plans: dict
    dataset: dict
    config: dict = field(repr=False)

    @property
    def labels(self) -> dict[str, Any]:
        return dict(self.dataset.get("labels", {}))

    @property
    def channel_names(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.dataset.get("channel_names", self.dataset.get("modality", {})).items()}

    @property
    def previous_stage(self) -> str | None:
        return self.config.get("previous_stage")

    @property
    def dimension(self) -> int:
        return len(self.config["patch_size"])

    def folds(self, checkpoint_name: str) -> list[str]:
        """Folds holding ``checkpoint_name``, as nnU-Net names them (``0``.. and ``all``), numeric first."""
        found = []
        for child in self.folder.glob("fold_*"):
            if (child / checkpoint_name).is_file():
                found.append(child.name[len("fold_") :])
        return sorted(found, key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0, f))

    def checkpoint_path(self, fold: str, checkpoint_name: str) -> Path:
        return self.folder / f"fold_{fold}" / checkpoint_name

    def input_channels(self) -> int:
        channels = len(self.channel_names) or 1
        if self.previous_stage is not None:
            channels += len(foreground_labels(self.labels))
        return channels

    def output_channels(self) -> int:
        if "regions_class_order" in self.dataset:
            return len(self.dataset["regions_class_order"])
        return len(self.labels)

    def build_network(self) -> Any:
        """The network of ``plans.json``'s ``architecture`` block, for inference (no deep supervision)."""
        plans_path = self.folder / "plans.json"
        arch = self.config.get("architecture")
        if not isinstance(arch, dict) or "network_class_name" not in arch:
            raise NnunetModelError(
                f"{plans_path}: configuration {self.name!r} has no 'architecture' block; plans from nnU-Net "
                "before 2.4 need to be converted by loading them once with nnU-Net 2.4 or later"
            )
        network_class = _locate(arch["network_class_name"], (_NETWORK_PREFIX,), "network class", plans_path)
        kwargs = copy.deepcopy(arch.get("arch_kwargs", {}))
        for key in arch.get("_kw_requires_import", []):
            if kwargs.get(key) is not None:
                kwargs[key] = _locate(kwargs[key], _IMPORTABLE_PREFIXES, key, plans_path)
        if "deep_supervision" in _init_parameters(network_class):
            kwargs["deep_supervision"] = False
        try:
            return network_class(input_channels=self.input_channels(), num_classes=self.output_channels(), **kwargs)
        except (TypeError, ValueError) as error:
            raise NnunetModelError(f"{plans_path}: cannot build {arch['network_class_name']} ({error})") from error


def _init_parameters(cls: type) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(cls.__init__).parameters)
    except (TypeError, ValueError):
        return set()


def foreground_labels(labels: dict[str, Any]) -> list[int]:
    values = set()
    for value in labels.values():
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if int(v) != 0:
                values.add(int(v))
    return sorted(values)


def load_configuration(folder: str | Path) -> NnunetConfiguration:
    folder = Path(folder)
    plans = _read_json(folder / "plans.json")
    dataset = _read_json(folder / "dataset.json")
    parts = split_folder_name(folder.name)
    name = parts[2] if parts else None
    configurations = plans.get("configurations", {})
    if name not in configurations:
        # A folder renamed by hand: its checkpoint says which configuration trained it.
        for child in sorted(folder.glob("fold_*/checkpoint_*.pth")):
            name = load_checkpoint(child)["init_args"].get("configuration")
            break
    if name not in configurations:
        raise NnunetModelError(
            f"{folder / 'plans.json'} has no configuration {name!r}; it has {', '.join(sorted(configurations))}"
        )
    config = copy.deepcopy(configurations[name])
    seen = {name}
    while "inherits_from" in config:  # nnU-Net's PlansManager resolves the same chain
        parent = config.pop("inherits_from")
        if parent in seen or parent not in configurations:
            raise NnunetModelError(f"{folder / 'plans.json'}: configuration {name!r} inherits from {parent!r}, "
                                   "which is missing or circular")  # fmt: skip
        seen.add(parent)
        config = {**copy.deepcopy(configurations[parent]), **config}
    return NnunetConfiguration(folder, name, plans, dataset, config)


def previous_stage_folder(configuration: NnunetConfiguration) -> Path:
    """The first stage of a cascade, beside it in the dataset folder; refused with its name when missing."""
    stage = configuration.previous_stage
    assert stage is not None
    parts = split_folder_name(configuration.folder.name)
    prefix = f"{parts[0]}__{parts[1]}__" if parts else ""
    candidate = configuration.folder.parent / f"{prefix}{stage}"
    if is_configuration_folder(candidate):
        return candidate
    others = configuration_folders(configuration.folder.parent)
    if stage in others:
        return others[stage]
    raise NnunetModelError(
        f"{configuration.folder} is a cascade whose first stage {stage!r} is missing: expected {candidate} beside it. "
        f"Copy the {stage} result folder of the same dataset there (nnU-Net runs {stage} first, then this stage)"
    )
