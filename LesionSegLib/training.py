"""Curating a training dataset from the scene and training on it in the background (Qt-free).

A case is a CT volume node and a segmentation node, saved through :func:`lesionseg.datasets.add_case` with
its provenance (the AI model that proposed it, read from the node's ``LesionSeg.*`` attributes; the
annotator; the time; the DICOM study and series). Training runs ``lesionseg train --progress jsonl`` in a
child process; its per-epoch events fill a table node that a plot chart shows live. The trained model is
written into the models folder, where the segmentation modules' model lists find it.

Next to LesionSeg's own presets, the recipe list offers nnU-Net v2 (``nnU-Net 3d_fullres`` ...): that runs
``lesionseg train --engine nnunet``, whose work folder (nnU-Net's raw, preprocessed and results) stays under
``<models>/.nnunet-training/<model id>`` for Resume, and whose result is imported as an nnU-Net model.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lesionseg.mrml
from lesionseg.datasets import CaseRecord, Dataset, add_case, init_dataset, remove_case
from lesionseg.jobs import EventKind, Job, JobEvent, JobState
from lesionseg.labels import named_like_lesion
from lesionseg.models import ModelRegistry, ModelSpec
from lesionseg.models.nnunet import PREFERRED_CONFIGURATIONS
from LesionSegLib import review
from LesionSegLib.jobs import BackgroundRun
from LesionSegLib.ranking import rank_provenance
from LesionSegLib.segmenting import (
    MODEL_ID_ATTRIBUTE,
    MODEL_VERSION_ATTRIBUTE,
    THRESHOLD_ATTRIBUTE,
    child_environment,
    input_volume_problem,
)
from LesionSegLib.tables import Column, fill_table_node

NNUNET_RECIPE = "nnU-Net "  # + a configuration: the recipe names in the list beside our presets
NNUNET_WORK = ".nnunet-training"  # under the models folder; the registry lists no folder without a model in it
CASE_TABLE_KIND = "dataset cases"
HISTORY_TABLE_KIND = "training history"

CASE_COLUMNS = (
    Column("case", "Case", kind="string"),
    Column("version", "Version", kind="int"),
    Column("labels", "Labels present", kind="string"),
    Column("provenance", "Provenance", kind="string"),
    Column("saved", "Saved", kind="string"),
)
HISTORY_COLUMNS = (
    Column("epoch", "Epoch"),
    Column("loss", "Training loss"),
    Column("dice_mean", "Validation Dice"),
)


# --- the dataset ------------------------------------------------------------------------------------


def dataset_exists(folder: str | Path) -> bool:
    return bool(folder) and Dataset(folder).exists()


def create_dataset(folder: str | Path, label_names: list[str]) -> Dataset:
    """A new, empty dataset whose labels are ``label_names`` (values 1..N); lesion-like names are lesions."""
    if not label_names:
        raise ValueError("name at least one label for the new dataset (the segments of the first case)")
    labels = {value: name for value, name in enumerate(label_names, start=1)}
    lesions = [value for value, name in labels.items() if named_like_lesion(name)]
    return init_dataset(folder, labels, lesion_labels=lesions)


def _provenance_text(provenance: Mapping[str, Any]) -> str:
    parts = []
    if provenance.get("source_model"):
        model = str(provenance["source_model"])
        if provenance.get("source_model_version"):
            model += f" {provenance['source_model_version']}"
        parts.append(f"AI: {model}")
    else:
        parts.append("manual")
    if provenance.get("annotator"):
        parts.append(f"by {provenance['annotator']}")
    return ", ".join(parts)


def case_rows(folder: str | Path) -> list[dict[str, Any]]:
    """One row per active case: id, current version, labels present (names), provenance, when saved."""
    dataset = Dataset(folder)
    dataset.require()
    names = dataset.labels()
    manifest = dataset.manifest()
    rows = []
    for case_id in dataset.active_cases(manifest):
        version = dataset.current_version(manifest, case_id)
        present = [names.get(int(v), f"Label_{v}") for v in version.get("labels_present", [])]
        provenance = version.get("provenance", {})
        rows.append(
            {
                "case": case_id,
                "version": int(version["version"]),
                "labels": ", ".join(present),
                "provenance": _provenance_text(provenance),
                "saved": str(provenance.get("saved_at", version.get("created", ""))),
            }
        )
    return rows


def case_table(scene: Any, folder: str | Path, node: Any | None = None) -> Any:
    return fill_table_node(scene, f"{Path(folder).name} cases", CASE_COLUMNS, case_rows(folder), CASE_TABLE_KIND, node)


def _dicom_uids(volume_node: Any) -> dict[str, str]:
    """The study and series UIDs subject hierarchy keeps for a volume loaded by the DICOM module."""
    from slicer import vtkMRMLSubjectHierarchyNode

    scene = volume_node.GetScene()
    hierarchy = vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene) if scene else None
    if hierarchy is None:
        return {}
    item = hierarchy.GetItemByDataNode(volume_node)
    if item == hierarchy.GetInvalidItemID():
        return {}
    uids = {"series_uid": hierarchy.GetItemUID(item, "DICOM")}
    parent = hierarchy.GetItemParent(item)
    if parent != hierarchy.GetInvalidItemID():
        uids["study_uid"] = hierarchy.GetItemUID(parent, "DICOM")
    return {key: value for key, value in uids.items() if value}


def case_provenance(volume_node: Any, segmentation_node: Any, annotator: str, note: str = "") -> dict[str, Any]:
    """Provenance for a saved case: AI model and version (when the segmentation is a LesionSeg result),
    annotator, time (added by the dataset), the DICOM UIDs of the CT, its rank when it was picked by rank, and the
    lesion review when the node holds one (accepted and rejected lesions, counts per status)."""
    provenance: dict[str, Any] = {"annotator": annotator.strip(), "note": note}
    model = segmentation_node.GetAttribute(MODEL_ID_ATTRIBUTE)
    if model:
        provenance["source_model"] = model
        provenance["source_model_version"] = segmentation_node.GetAttribute(MODEL_VERSION_ATTRIBUTE) or ""
        threshold = segmentation_node.GetAttribute(THRESHOLD_ATTRIBUTE)
        if threshold:
            provenance["source_threshold"] = float(threshold)
    reviewed = review.review_provenance(segmentation_node, volume_node)
    if reviewed is not None:
        provenance["lesion_review"] = reviewed
    provenance.update(_dicom_uids(volume_node))
    provenance.update(rank_provenance(volume_node))  # its place in "Which case next", when it was ranked
    instances = volume_node.GetAttribute("DICOM.instanceUIDs")
    if instances:
        provenance["instance_count"] = len(instances.split())
    return provenance


def save_case(
    folder: str | Path,
    volume_node: Any,
    segmentation_node: Any,
    annotator: str,
    label_map: Mapping[str, int] | None = None,
    case_id: str | None = None,
    note: str = "",
) -> CaseRecord:
    """Save the volume and its segmentation (on the volume's grid) as a new case or a new case version.

    ``label_map`` maps segment names to the dataset's label values (segments it leaves out are not
    saved); by default segments are matched to the dataset's labels by name. A folder without a dataset
    gets one, labelled by these segments.  With no ``case_id``, a volume the dataset already holds (same
    voxels) is saved as a new version of that case: the annotator corrected its mask, and a second case
    of one image would leak into validation.
    """
    problem = input_volume_problem(volume_node)
    if problem:
        raise ValueError(problem)
    if segmentation_node is None or segmentation_node.GetSegmentation().GetNumberOfSegments() == 0:
        raise ValueError("choose a segmentation with at least one segment for the case")
    if not annotator.strip():
        raise ValueError("enter the annotator's name: every saved case records who checked it")
    image = lesionseg.mrml.image_from_volume_node(volume_node)
    labels, infos = lesionseg.mrml.labelmap_from_segmentation_node(segmentation_node, volume_node)
    if not dataset_exists(folder):
        create_dataset(folder, [info.name for info in infos])
    provenance = case_provenance(volume_node, segmentation_node, annotator, note)
    return add_case(
        folder,
        image,
        labels,
        infos,
        case_id,
        provenance,
        label_map,
        drop_unmapped=label_map is not None,
        same_image="new_version",
    )


def remove_dataset_case(folder: str | Path, case_id: str, by: str, reason: str = "") -> int:
    """Take a case out of training (its files stay, as a trash version); returns that version number."""
    return remove_case(folder, case_id, reason=reason, by=by)


# --- training -----------------------------------------------------------------------------------------


def training_presets() -> list[str]:
    """The engine's training presets, read from its package data (importing the trainer would load torch)."""
    from importlib import resources

    folder = resources.files("lesionseg.resources").joinpath("training")
    return sorted(entry.name[: -len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def training_recipes() -> list[str]:
    """What the module offers to train with: LesionSeg's presets, then nnU-Net's configurations."""
    return training_presets() + [NNUNET_RECIPE + name for name in PREFERRED_CONFIGURATIONS]


def missing_recipe_requirements(recipe: str) -> list[tuple[str, str]]:
    """What training with ``recipe`` needs beyond Segment's packages and this Python lacks: nnunetv2 with its
    predictor's and trainer's imports for an nnU-Net recipe, nothing for LesionSeg's presets."""
    if nnunet_configuration(recipe) is None:
        return []
    from LesionSegLib import nnunetmodels

    return nnunetmodels.missing_nnunet_requirements(training=True)


def nnunet_configuration(recipe: str) -> str | None:
    """The nnU-Net configuration a recipe name trains, or None for one of LesionSeg's presets."""
    return recipe[len(NNUNET_RECIPE) :] if recipe.startswith(NNUNET_RECIPE) else None


@dataclass(frozen=True)
class ImportedModel:
    """A model that nnU-Net trained, as imported into the models folder (the segmentation modules list it)."""

    id: str
    version: str
    folder: Path


def write_training_config(path: str | Path, preset: str, model_id: str, learning_rate: float | None = None) -> Path:
    """A config file that starts from ``preset`` and sets the model's id and, when given, the learning rate.

    (The epoch count goes on the command line: a resumed run keeps its own config, but takes --epochs.)
    """
    config: dict[str, Any] = {"base": preset, "model": {"id": model_id}}
    if learning_rate:
        config["optimizer"] = {"lr": float(learning_rate)}
    from lesionseg.training import load_config

    load_config(dict(config))  # refuse a bad preset or value now, not in the child
    path = Path(path)
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


def history_plot(scene: Any, table_node: Any, name: str) -> Any:
    """A plot chart of training loss and validation Dice per epoch, drawn from ``table_node``."""
    from slicer import vtkMRMLPlotSeriesNode

    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    chart.SetTitle(name)
    chart.SetXAxisTitle("epoch")
    chart.SetYAxisTitle("loss / Dice")
    for column, title, color in (
        ("loss", "Training loss", (0.85, 0.3, 0.1)),
        ("dice_mean", "Validation Dice", (0.1, 0.45, 0.85)),
    ):
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} {title}")
        series.SetAndObserveTableNodeID(table_node.GetID())
        series.SetXColumnName("epoch")
        series.SetYColumnName(column)
        series.SetPlotType(vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        series.SetColor(*color)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return chart


class TrainingRun(BackgroundRun):
    """One background training run: ``start()``, ``poll()`` from a timer until ``finished``, then ``model()``."""

    what = "Training"
    cancelled_text = "Training cancelled; the last finished epoch is saved, so Resume continues from it."

    def __init__(
        self,
        dataset_folder: str | Path,
        preset: str,
        model_id: str,
        models_dir: str | Path,
        python: str,
        device: str = "auto",
        epochs: int | None = None,
        learning_rate: float | None = None,
        resume: bool = False,
        environment: Mapping[str, str] | None = None,
        nnunet_trainer: str | None = None,
    ) -> None:
        """``preset`` is any of :func:`training_recipes`; ``epochs`` and ``learning_rate`` apply to LesionSeg's
        presets (an nnU-Net trainer class, ``nnunet_trainer``, sets its own)."""
        Dataset(dataset_folder).require()
        if not Dataset(dataset_folder).active_cases():
            raise ValueError(f"the dataset {dataset_folder} has no cases yet; save some cases first")
        self.models_dir = Path(models_dir)
        self.model_id = model_id
        self.output = self.models_dir / model_id
        self.configuration = nnunet_configuration(preset)
        self.history: list[dict[str, Any]] = []
        self.fraction = 0.0
        self.log: list[str] = []
        self.summary: dict[str, Any] | None = None
        if self.configuration is not None:
            if epochs or learning_rate:
                raise ValueError(
                    f"{preset} trains with nnU-Net's trainer, which sets its own epochs and learning rate; "
                    "leave both at 0, or choose one of LesionSeg's presets to set them"
                )
            argv = self._nnunet_argv(dataset_folder, python, device, resume, nnunet_trainer)
            self.work_dir = Path(tempfile.mkdtemp(prefix="LesionSegTraining-"))  # after every refusal: none left
            self.job = Job(argv, env=child_environment(environment))
            return
        if resume and not (self.output / "checkpoint_latest.pt").is_file():
            raise ValueError(f"there is no training of {model_id!r} to resume in {self.output}; press Train")
        if not resume and self.output.exists() and any(self.output.iterdir()):
            raise ValueError(f"{self.output} already holds a model; choose another model name, or Resume it")
        self.work_dir = Path(tempfile.mkdtemp(prefix="LesionSegTraining-"))  # after every refusal: none left
        argv = [python, "-m", "lesionseg", "train", "--dataset", str(dataset_folder)]
        argv += ["--output", str(self.output), "--device", device, "--progress", "jsonl"]
        if resume:
            # A resumed run continues with the config stored in its checkpoint.
            argv.append("--resume")
        else:
            config = write_training_config(self.work_dir / "config.json", preset, model_id, learning_rate)
            argv += ["--config", str(config)]
        if epochs:
            argv += ["--epochs", str(int(epochs))]
        self.job = Job(argv, env=child_environment(environment))

    def _nnunet_argv(self, dataset_folder, python: str, device: str, resume: bool, trainer: str | None) -> list[str]:
        work = self.models_dir / NNUNET_WORK / self.model_id
        if resume and not work.is_dir():
            raise ValueError(f"there is no nnU-Net training of {self.model_id!r} to resume in {work}; press Train")
        if not resume and (work.exists() or self.output.exists()):
            raise ValueError(f"{self.model_id!r} is already trained or training here; choose another model name")
        argv = [python, "-m", "lesionseg", "train", "--engine", "nnunet", "--dataset", str(dataset_folder)]
        argv += ["--configuration", str(self.configuration), "--output", str(work), "--model-id", self.model_id]
        argv += ["--models-dir", str(self.models_dir), "--device", device, "--progress", "jsonl"]
        return argv + (["--trainer", trainer] if trainer else []) + (["--resume"] if resume else [])

    def start(self) -> TrainingRun:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.job.start()
        return self

    def poll(self) -> bool:
        """Drain the job's output; True when a new epoch arrived. New log lines are in ``log``."""
        self.log = []
        new_epochs = [self.read(event) for event in self.job.poll()]
        return any(new_epochs)

    def read(self, event: JobEvent) -> bool:
        """Take in one event of the job; True when it is a new epoch's."""
        data = event.data
        if event.kind is EventKind.FINISHED:
            self.log.append(f"training {data.get('state')}")
            if data.get("text") and event.state is not JobState.SUCCEEDED:
                self.log.append(str(data["text"])[-2000:])
        elif event.kind is EventKind.PROGRESS and "epoch" in data and "loss" in data:
            # One event per finished epoch, with its loss (and validation Dice when it validated).
            self.history.append(data)
            if data.get("percent") is not None:
                self.fraction = float(data["percent"]) / 100.0
            dice = data.get("dice_mean")
            self.log.append(
                f"epoch {data['epoch']}: loss {data['loss']:.4f}"
                + (f", validation Dice {dice:.4f}" if dice is not None else "")
            )
            return True
        elif event.kind is EventKind.RESULT:
            self.summary = data
            self.log.append(f"model written to {data.get('output')} (best Dice {data.get('best_dice')})")
        elif event.kind is EventKind.ERROR:
            self.log.append(f"Error: {data.get('type', '')}: {data.get('text', '')}")
        elif data.get("text"):
            self.log.append(str(data["text"]))
        return False

    def progress_text(self) -> str:
        """Epoch, iterations and the estimated time left."""
        if not self.history:
            return "starting"
        last = self.history[-1]
        text = f"epoch {last['epoch']}, {last.get('iterations', 0)} iterations in the last epoch"
        eta = self.eta_s()
        if eta is not None:
            text += f", about {_duration(eta)} left"
        return text

    def eta_s(self) -> float | None:
        if not self.history or self.fraction <= 0:
            return None
        elapsed = float(self.history[-1].get("elapsed_s", 0.0))
        return elapsed * (1.0 - self.fraction) / self.fraction

    def history_table(self, scene: Any, node: Any | None = None) -> Any:
        rows = [{"epoch": h["epoch"], "loss": h.get("loss"), "dice_mean": h.get("dice_mean")} for h in self.history]
        return fill_table_node(scene, f"{self.model_id} training", HISTORY_COLUMNS, rows, HISTORY_TABLE_KIND, node)

    def model(self) -> ModelSpec | ImportedModel:
        """The trained model as the registry now lists it (an nnU-Net recipe's: as imported)."""
        self.require_success("training has not finished yet")
        self.cleanup()
        if self.configuration is not None:
            from lesionseg.models.nnunet_import import SIDECAR

            if not (self.output / SIDECAR).is_file():
                raise ValueError(f"the nnU-Net training finished, but {self.output} holds no imported model")
            return ImportedModel(self.model_id, "nnU-Net " + self.configuration, self.output)
        return ModelRegistry(self.models_dir).get(self.model_id)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
