"""Imported nnU-Net models in the modules, Qt-free: their list entries, their run options, and their one-shot job.

An imported nnU-Net model (``lesionseg models import``) is a folder ``<models dir>/<id>/`` holding the Dataset
folder's configurations and the sidecar ``lesionseg-nnunet.json``. The modules list it beside LesionSeg's own models
through a :class:`~lesionseg.models.ModelEntry` whose spec is made from the sidecar: its labels (names, colours,
which are lesions) and its channels, so ``is_lesion_model`` and the channel selectors treat both kinds alike.

Why a one-shot ``lesionseg segment`` job and not the warm worker: the worker keeps one LesionSeg network loaded
(its cache key is the spec and device); an nnU-Net model is several folds and stages whose choice depends on the run
options (folds, checkpoint, mirroring), and its loaded predictors hold every fold's weights. The ``segment`` command
already routes nnU-Net models, takes every option and one ``--input`` per channel, and reports the same JSON-lines
events; run as a :class:`~lesionseg.jobs.Job` it gets the same progress, and cancel kills its process tree. The
memory of a large ensemble goes back to the system when the run ends, instead of staying in a worker between runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lesionseg.inference.channels import channel_modality
from lesionseg.labels import LabelInfo
from lesionseg.models import ModelEntry
from lesionseg.models.hashcache import BackgroundHasher, is_large
from lesionseg.models.nnunet_import import SIDECAR
from lesionseg.models.registry import models_dir
from lesionseg.models.spec import (
    InferenceSpec,
    InputSpec,
    IntensitySpec,
    ModelSpec,
    PostprocessSpec,
    PreprocessSpec,
    WeightsSpec,
)

# What an nnU-Net model's job imports beyond segmenting.REQUIREMENTS, as (import name, pip requirement), pinned as
# requirements/nnunet.txt pins them (a test keeps the two equal). Installed on first use with --no-deps: nnunetv2's own
# dependencies would replace the torch that Slicer has (see requirements/nnunet.txt).
NNUNET_REQUIREMENTS = (
    ("nnunetv2", "nnunetv2==2.8.1"),
    ("dynamic_network_architectures", "dynamic-network-architectures==0.4.4"),
    ("acvl_utils", "acvl-utils==0.2.6"),
    ("batchgenerators", "batchgenerators==0.25.5"),
    ("batchgeneratorsv2", "batchgeneratorsv2==0.3.6"),
    ("blosc2", "blosc2==4.15.0"),
    ("msgpack", "msgpack==1.2.4"),
    ("ndindex", "ndindex==1.10.1"),
    ("httpx", "httpx==0.29.0"),
    ("threadpoolctl", "threadpoolctl==3.8.0"),
    ("tqdm", "tqdm==4.70.1"),
    ("pandas", "pandas==3.1.1"),
    # import-time dependencies that requirements/nnunet.txt leaves to requirements/test.txt: pandas imports
    # python-dateutil and httpx imports idna, and --no-deps installs neither
    ("dateutil", "python-dateutil>=2.9"),
    ("idna", "idna>=3.0"),
)

# What nnU-Net's trainer imports beyond NNUNET_REQUIREMENTS, pinned as requirements/nnunet-training.txt pins them (a
# test keeps the two equal; why each is needed is written there). Installed with --no-deps when the user first trains
# an nnU-Net recipe in LesionSegTraining.
NNUNET_TRAINING_REQUIREMENTS = (
    ("seaborn", "seaborn==0.13.2"),
    ("sklearn", "scikit-learn==1.9.1"),
    ("joblib", "joblib==1.6.0"),
    ("cloudpickle", "cloudpickle==3.1.3"),
    ("narwhals", "narwhals==2.29.0"),
    ("cc3d", "connected-components-3d==4.1.1"),
)

ENGINE = "nnunet"
NETWORK_NAME = "nnU-Net v2"  # the spec's network name for an imported nnU-Net model
CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")
MIRRORING_CHOICES = ("auto", "on", "off")  # auto: on for a GPU, off on the CPU (the engine decides)
DEFAULT_TILE_STEP_SIZE = 0.5


def missing_nnunet_requirements(training: bool = False) -> list[tuple[str, str]]:
    """The (import name, pip requirement) pairs of NNUNET_REQUIREMENTS (and with ``training``,
    NNUNET_TRAINING_REQUIREMENTS) that this Python cannot import."""
    import importlib.util

    wanted = NNUNET_REQUIREMENTS + (NNUNET_TRAINING_REQUIREMENTS if training else ())
    return [(name, requirement) for name, requirement in wanted if importlib.util.find_spec(name) is None]


def is_nnunet_spec(spec: ModelSpec) -> bool:
    """Whether the spec stands for an imported nnU-Net model (made by :func:`nnunet_spec`)."""
    return spec.source.get("engine") == ENGINE


def read_sidecar(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / SIDECAR
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: unreadable ({error}); import the model again") from error
    if not isinstance(data, dict) or not isinstance(data.get("labels"), list) or not data["labels"]:
        raise ValueError(f"{path}: no labels recorded; import the model again")
    return data


def nnunet_spec(folder: str | Path) -> ModelSpec:
    """The spec the modules use for an imported nnU-Net model: labels, lesion labels and channels from its sidecar.

    The network, preprocessing and inference fields are placeholders: nnU-Net's own plans decide those, and the
    model runs through ``lesionseg segment`` (:func:`segment_argv`), never through LesionSeg's pipeline.
    """
    folder = Path(folder)
    sidecar = read_sidecar(folder)
    lesions = {int(v) for v in sidecar.get("lesion_labels") or []}
    labels = tuple(LabelInfo.from_dict(d, is_lesion=int(d["value"]) in lesions) for d in sidecar["labels"])
    modality = {str(k): str(v) for k, v in (sidecar.get("modality") or {}).items()}
    names = [modality[k] for k in sorted(modality, key=lambda k: int(k) if k.isdigit() else 0)] or ["image"]
    configurations = [str(c) for c in sidecar.get("configurations") or []]
    return ModelSpec(
        id=folder.name,
        version="nnU-Net",
        network_name=NETWORK_NAME,
        network_parameters={"out_channels": max(label.value for label in labels) + 1},
        input_channels=len(names),
        inputs=tuple(InputSpec(name, channel_modality(name)) for name in names) if modality else (),
        preprocessing=PreprocessSpec("as stored", None, IntensitySpec("zscore")),
        inference=InferenceSpec(roi_size=(1, 1, 1)),
        postprocessing=PostprocessSpec(),
        labels=labels,
        weights=WeightsSpec(format=ENGINE, path=SIDECAR),
        description=f"nnU-Net v2 result folder ({', '.join(configurations) or 'no configuration'}), "
        f"imported from {sidecar.get('source', 'an unknown source')}",
        intended_use=str(sidecar.get("intended_use", "")),
        license=str(sidecar.get("license", "")),
        lesion_labels=tuple(sorted(lesions)),
        folder=folder,
        source={"engine": ENGINE, "sidecar": sidecar},
    )


def _checkpoint_state(
    folder: Path, recorded: Mapping[str, str], hasher: BackgroundHasher | None
) -> tuple[bool, bool | None, str, bool]:
    """(present, verified, problem, pending) of an imported model's checkpoints against the hashes of its import.

    With ``hasher``, a large checkpoint its cache does not know yet is hashed on its thread (pending meanwhile),
    so listing the models does not read gigabytes of folds each time.
    """
    files = [folder / name for name in recorded]
    missing = [f for f in files if not f.is_file()]
    if missing or not files:
        return False, False, "", False
    if hasher is not None:
        unknown = [f for f in files if hasher.cache.lookup(f) is None and is_large(f, hasher.threshold_bytes)]
        if unknown:
            hasher.submit(unknown)
            return True, None, "", True
    for name, expected in recorded.items():
        path = folder / name
        actual = hasher.cache.hashes(path)["sha256"] if hasher is not None else _sha256(path)
        if actual != expected:
            problem = f"checkpoint {name} differs from the one imported (SHA-256); import the model again"
            return True, False, problem, False
    return True, True, "", False


def _sha256(path: Path) -> str:
    from lesionseg.models.weights import file_hashes

    return file_hashes(path)["sha256"]


def nnunet_entries(models_dir_: str | Path | None = None, hasher: BackgroundHasher | None = None) -> list[ModelEntry]:
    """The imported nnU-Net models of the models folder, as list entries (a broken sidecar gives an entry that
    says so, rather than hiding the model)."""
    root = models_dir(models_dir_)
    out: list[ModelEntry] = []
    if not root.is_dir():
        return out
    for sidecar_path in sorted(root.glob(f"*/{SIDECAR}")):
        folder = sidecar_path.parent
        try:
            spec = nnunet_spec(folder)
        except ValueError:
            continue  # ``lesionseg models list`` names the problem; a model without labels cannot be shown
        recorded = spec.source["sidecar"].get("checkpoints")
        if not isinstance(recorded, dict):
            out.append(ModelEntry(spec, "user", False, False, "its sidecar records no checkpoints; import it again"))
            continue
        present, verified, problem, pending = _checkpoint_state(folder, recorded, hasher)
        out.append(ModelEntry(spec, "user", present, verified, problem, pending))
    return out


@dataclass(frozen=True)
class NnunetRunOptions:
    """The nnU-Net options of one run, as the module's advanced section holds them."""

    folds: tuple[str, ...] = ()  # empty: every fold present
    checkpoint: str = CHECKPOINTS[0]
    mirroring: str = "auto"  # MIRRORING_CHOICES
    tile_step_size: float = DEFAULT_TILE_STEP_SIZE

    def argv(self) -> list[str]:
        """These options as ``lesionseg segment`` arguments."""
        out = ["--checkpoint", self.checkpoint, "--tile-step-size", repr(float(self.tile_step_size))]
        if self.folds:
            out += ["--folds", *self.folds]
        if self.mirroring != "auto":
            out.append("--tta" if self.mirroring == "on" else "--no-tta")
        return out


def parse_folds(text: str) -> tuple[str, ...]:
    """Folds as typed in the panel ("0 1 2", "0,1", "all"); empty text means every fold present."""
    folds = tuple(part for part in re.split(r"[\s,;]+", text.strip()) if part)
    bad = [f for f in folds if not (f.isdigit() or f == "all")]
    if bad:
        raise ValueError(f"folds {', '.join(bad)}: give fold numbers such as 0 1 2 (or all), or leave it empty")
    return folds


def sidecar_options(spec: ModelSpec) -> NnunetRunOptions:
    """The run options an imported model starts with: its sidecar's where it records them, else nnU-Net's own
    defaults (every fold, checkpoint_final.pth, mirroring by device, tile step 0.5)."""
    sidecar = spec.source.get("sidecar", {}) if is_nnunet_spec(spec) else {}
    folds = sidecar.get("folds") or ()
    mirroring = sidecar.get("mirroring", sidecar.get("tta"))
    return NnunetRunOptions(
        folds=tuple(str(f) for f in folds) if isinstance(folds, (list, tuple)) else parse_folds(str(folds)),
        checkpoint=str(sidecar.get("checkpoint") or CHECKPOINTS[0]),
        mirroring="auto" if mirroring is None else ("on" if mirroring else "off"),
        tile_step_size=float(sidecar.get("tile_step_size") or DEFAULT_TILE_STEP_SIZE),
    )


def segment_argv(
    python: str,
    model_id: str,
    input_paths: Sequence[str | Path],
    output_path: str | Path,
    device: str,
    options: NnunetRunOptions,
    models_dir_: str | Path | None = None,
    crop_body: bool = False,
) -> list[str]:
    """The one-shot ``lesionseg segment`` command for an imported nnU-Net model, one ``--input`` per channel."""
    argv = [python, "-m", "lesionseg", "segment", "--model", model_id]
    for path in input_paths:
        argv += ["--input", str(path)]
    argv += ["--output", str(output_path), "--device", device, "--progress", "jsonl"]
    if models_dir_:
        argv += ["--models-dir", str(models_dir_)]
    if crop_body:
        argv.append("--crop-body")
    return argv + options.argv()
