"""Segmenting a volume node in the background, Qt-free: checks, the child-process job, and the result node.

The widget only drives a :class:`SegmentationRun` from a timer: ``start()``, then ``poll()`` until
``finished``, then ``load_result(scene)``. The volume is handed to the child as an NRRD written by the
engine (so the child sees exactly the engine's geometry), and the labelmap comes back through the MRML
bridge into a **new** segmentation node. A cancelled or failed run puts nothing into the scene.

The child is the session's warm worker (:func:`session_worker`): one process per Slicer session, started by
the first Segment, keeping the last model loaded so that the next patient costs only the network's time.
Cancel ends it with its whole process tree, and the next Segment starts a fresh one; so does a crash. It is
shut down by the modules' cleanup (:func:`shutdown_session_worker`), at interpreter exit (``atexit``), and,
should Slicer die first, by itself (its stdin closes, or its next event finds no reader).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lesionseg.mrml
from lesionseg.image import Image
from lesionseg.io import read_image, write_image
from lesionseg.io.segnrrd import terminology_entry
from lesionseg.jobs import EventKind, Job, JobEvent, JobState, ManagedWorker, WorkerRequest
from lesionseg.models import ModelEntry, ModelRegistry, ModelSpec, models_dir
from lesionseg.models.hashcache import BackgroundHasher, HashCache
from lesionseg.models.spec import check_threshold
from lesionseg.orientation import orientation_code
from LesionSegLib import nnunetmodels
from LesionSegLib import uncertainty as uncertainty_views
from LesionSegLib.channels import (
    CHANNEL_FIELDS,
    channel_names,
    channel_volumes,
    channels_problem,
    default_channel_volume,
)
from LesionSegLib.jobs import BackgroundRun

# Attributes on every result node: the training module reads them back as the case's provenance.
MODEL_ID_ATTRIBUTE = "LesionSeg.ModelId"
MODEL_VERSION_ATTRIBUTE = "LesionSeg.ModelVersion"
DEVICE_ATTRIBUTE = "LesionSeg.Device"
CREATED_ATTRIBUTE = "LesionSeg.Created"
SOURCE_VOLUME_ATTRIBUTE = "LesionSeg.SourceVolume"
THRESHOLD_ATTRIBUTE = "LesionSeg.Threshold"  # the probability cut; empty for the most probable class
WARNINGS_ATTRIBUTE = "LesionSeg.Warnings"  # what the run warned about (e.g. input not like CT), one per line


# What the background segmentation imports, as (import name, pip requirement). torch comes first and is
# installed on its own (through PyTorchUtils when present), so that its CUDA build matches the driver.
REQUIREMENTS = (
    ("torch", "torch"),
    ("monai", "monai>=1.4"),
    ("einops", "einops>=0.7"),  # MONAI imports it lazily, for UNETR only
    ("safetensors", "safetensors>=0.4"),
    ("yaml", "pyyaml>=6"),
    ("SimpleITK", "SimpleITK>=2.3"),
    ("nibabel", "nibabel>=5.0"),
    ("nrrd", "pynrrd>=1.0"),
    ("pydicom", "pydicom>=2.4"),  # the engine reads and writes with Slicer 5.10's bundled 2.4.4 too
    ("jsonschema", "jsonschema>=4.0"),
    ("scipy", "scipy>=1.11"),
    ("skimage", "scikit-image>=0.22"),
)


def _not_importable(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    import importlib.util

    return [(name, requirement) for name, requirement in pairs if importlib.util.find_spec(name) is None]


def missing_requirements() -> list[tuple[str, str]]:
    """The (import name, pip requirement) pairs whose package this Python cannot import."""
    return _not_importable(REQUIREMENTS)


# Offered with Segment's install, not needed to segment: DICOM SEG export writes with highdicom, which Slicer 5.12
# bundles and 5.10 does not. highdicom needs Python 3.10 or newer and pydicom 3, so on Slicer 5.10 installing it
# upgrades the bundled pydicom 2.4 (the engine and Slicer's DICOM module work with either).
EXPORT_REQUIREMENTS = (("highdicom", "highdicom>=0.23"),)
EXPORT_REQUIREMENTS_PYTHON = (3, 10)


def missing_export_requirements(python: tuple[int, ...] | None = None) -> list[tuple[str, str]]:
    """The export packages (highdicom for DICOM SEG) this Python lacks and could run; empty on a Python they need
    more than (``python``: a version to judge instead of this one)."""
    if tuple(python or sys.version_info[:2]) < EXPORT_REQUIREMENTS_PYTHON:
        return []
    return _not_importable(EXPORT_REQUIREMENTS)


# Offered with Segment's install, not needed to segment: on the CPU the background job runs the network through
# OpenVINO when it can import it (faster than torch there), and through torch otherwise, saying so in its log.
SPEED_REQUIREMENTS = (("openvino", "openvino>=2025.0"),)


def missing_speed_requirements() -> list[tuple[str, str]]:
    """The optional CPU-speed packages (OpenVINO) this Python lacks."""
    return _not_importable(SPEED_REQUIREMENTS)


# Needed only by imported nnU-Net models, so installed when the user first picks one: nnunetv2 and what its predictor
# imports (nnunetmodels.NNUNET_REQUIREMENTS).  Installed with --no-deps: nnunetv2's declared dependencies pull timm
# and torchvision, and PyPI's torchvision replaces or fails to load beside Slicer's torch; scikit-image and
# SimpleITK come with REQUIREMENTS.


def missing_model_requirements(spec: ModelSpec | None) -> list[tuple[str, str]]:
    """What running ``spec``'s model needs beyond :data:`REQUIREMENTS` and this Python lacks: nnunetv2 and its
    predictor's imports for an imported nnU-Net model, nothing for LesionSeg's own models (or no model chosen)."""
    if spec is None or not nnunetmodels.is_nnunet_spec(spec):
        return []
    return nnunetmodels.missing_nnunet_requirements()


def model_requirements_pip_arguments(missing: Iterable[tuple[str, str]]) -> list[str]:
    """The ``pip install`` arguments for :func:`missing_model_requirements`'s packages (``--no-deps``: see above)."""
    return ["--no-deps", *(requirement for _name, requirement in missing)]


def packages_problem() -> str:
    """What to install before segmenting in this Slicer (a fresh one lacks most of REQUIREMENTS); empty if none."""
    missing = missing_requirements()
    if not missing:
        return ""
    names = ", ".join(requirement for _name, requirement in missing)
    return f"Segmenting needs Python packages this Slicer does not have yet ({names}); click Segment to install them."


def input_volume_problem(volume_node: Any) -> str:
    """What makes this node unusable as the CT to segment, naming what to choose instead; empty if none.

    Cheap (no voxel copy), so the widget can ask on every change.
    """
    if volume_node is None:
        return "Select an input volume: the CT to segment."
    name = volume_node.GetName()
    if volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        return f"{name!r} is a labelmap, not a CT; choose the CT volume it was drawn on as the input."
    if not volume_node.IsA("vtkMRMLScalarVolumeNode"):
        return f"{name!r} is a {volume_node.GetClassName()}; choose a scalar CT volume as the input."
    data = volume_node.GetImageData()
    if data is None:
        return f"{name!r} holds no image data; load the CT again."
    if data.GetNumberOfScalarComponents() != 1:
        return (
            f"{name!r} has {data.GetNumberOfScalarComponents()} components per voxel (colour or vector image); "
            "the models need a single-component CT volume."
        )
    dims = data.GetDimensions()
    if min(dims) < 2:
        return (
            f"{name!r} is a 2D image ({dims[0]}×{dims[1]}×{dims[2]} voxels); the models need a 3D CT volume "
            "with several slices."
        )
    return ""


def default_input_volume(scene: Any) -> Any:
    """The volume a panel preselects: the scene's first CT its volume selector can show, or None.

    The selectors list exactly ``vtkMRMLScalarVolumeNode`` (``showChildNodeTypes`` is false), so labelmaps,
    vector and tensor volumes, which are subclasses of it, are passed over, and so are hidden nodes; a volume
    the models can use comes before one they cannot (e.g. a 2D image).
    """
    shown = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        if node.GetClassName() == "vtkMRMLScalarVolumeNode" and not node.GetHideFromEditors():
            shown.append(node)
    usable = [node for node in shown if not input_volume_problem(node)]
    return (usable or shown or [None])[0]


def check_input_volume(volume_node: Any) -> Image:
    """The volume as the engine sees it, or a ValueError that names what is wrong and what to choose."""
    problem = input_volume_problem(volume_node)
    if problem:
        raise ValueError(problem)
    return lesionseg.mrml.image_from_volume_node(volume_node)


def is_lesion_model(spec: ModelSpec) -> bool:
    """ProstateMetSeg lists the models with a lesion label (the spec's ``lesion_labels``, else label names)."""
    return any(label.is_lesion for label in spec.labels)


def model_entries(
    models_dir: str | Path | None = None, lesion: bool = False, hasher: BackgroundHasher | None = None
) -> list[ModelEntry]:
    """The registry's models for one module (lesion models, or the others): models for patients first, then the
    phantom-trained demo models, each by id.

    With ``hasher``, weight hashes are remembered between listings and large new files are hashed on its
    thread (their entries are ``pending`` meanwhile), so listing does not read every weights file each time.
    """
    entries = ModelRegistry(models_dir).entries(hasher=hasher)
    # Imported nnU-Net models too: their sidecar says which labels are lesions, so they join the right module.
    entries += nnunetmodels.nnunet_entries(models_dir, hasher)
    return sorted((e for e in entries if is_lesion_model(e.spec) == lesion), key=lambda e: (e.spec.demo, e.spec.id))


def preselected_model_id(entries: Iterable[ModelEntry], chosen: str = "") -> str:
    """The model a panel's list starts on: the user's earlier choice while it is listed, else the first model for
    patients; never a demo model the user has not chosen ("" then: the panel asks for a choice)."""
    entries = list(entries)
    if chosen and any(e.spec.id == chosen for e in entries):
        return chosen
    return next((e.spec.id for e in entries if not e.spec.demo), "")


NOT_STATED = "not stated in its spec"


def model_summary(entry: ModelEntry) -> str:
    """What the panel shows of the chosen model before Segment: description, intended use, licence."""
    spec = entry.spec
    lines = [f"{spec.id} {spec.version}" + (f": {spec.description}" if spec.description else "")]
    lines.append(f"Intended use: {spec.intended_use or NOT_STATED}")
    lines.append(f"Licence: {spec.license or NOT_STATED}")
    return "\n".join(lines)


def describe_entry(entry: ModelEntry) -> str:
    """One line for the model selector: id, version, the state of its weights, and whether it is a demo."""
    demo = " (demo: synthetic phantoms only)" if entry.spec.demo else ""
    return _describe_weights(entry) + demo


def _describe_weights(entry: ModelEntry) -> str:
    if entry.pending:
        state = "verifying weights…"
    elif entry.problem:
        state = f"weights corrupt: {entry.problem}"
    elif not entry.weights_present:
        state = "weights not downloaded"
    elif entry.verified:
        state = "weights verified"
    else:
        state = "weights present (no published hash)"
    return f"{entry.spec.id} {entry.spec.version} — {state}"


def weights_problem(entry: ModelEntry) -> str:
    """Why this model cannot run yet (empty when it can)."""
    if entry.pending:
        return f"The weights of {entry.spec.id!r} are being verified (hashed); this takes a few seconds."
    if entry.problem:
        return f"The weights of {entry.spec.id!r} fail their check ({entry.problem}); download them again."
    if not entry.weights_present and nnunetmodels.is_nnunet_spec(entry.spec):
        return f"Checkpoints of the nnU-Net model {entry.spec.id!r} are missing; import it again."
    if not entry.weights_present:
        return f"The weights of {entry.spec.id!r} are not on this computer; press Download first."
    return ""


def slicer_python(search_path: str | None = None) -> str:
    """Slicer's own Python launcher, PythonSlicer, which the background job runs with.

    Inside the app Slicer puts it on PATH; otherwise it sits beside ``sys.executable``.
    """
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    found = shutil.which("PythonSlicer", path=search_path)
    if found:
        return found
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    raise RuntimeError(f"{name} was not found on PATH nor beside {sys.executable}; reinstall Slicer")


def child_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child that runs ``python -m lesionseg``, with the engine importable.

    ``base`` is the environment to start from: inside Slicer, ``slicer.util.startupEnvironment()``, since
    the PythonSlicer launcher sets up its own paths and the app's would clash (default: ours). An
    installed extension has the engine on PythonSlicer's path already; a source tree added under
    Application Settings > Modules does not, so the folder holding ``lesionseg/`` goes first.
    """
    import lesionseg

    env = dict(os.environ if base is None else base)
    root = str(Path(lesionseg.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def download_job(
    model_id: str, python: str, models_dir: str | Path | None = None, environment: Mapping[str, str] | None = None
) -> Job:
    """A (not yet started) job that downloads and verifies a model's weights with the engine."""
    argv = [python, "-m", "lesionseg", "models"]
    if models_dir:
        argv += ["--models-dir", str(models_dir)]
    return Job([*argv, "download", model_id], env=child_environment(environment))


def result_name(volume_node: Any, module: str, spec: ModelSpec, threshold: float | None = None) -> str:
    """The result node's name; runs at different detection thresholds stay apart in the data tree."""
    name = f"{volume_node.GetName()} – {module} {spec.version}"
    return name if threshold is None else f"{name} (threshold {threshold:.2f})"


_session_worker: ManagedWorker | None = None


def session_worker(python: str, environment: Mapping[str, str] | None = None) -> ManagedWorker:
    """The one warm worker of this Slicer session, shared by the modules, set to run with ``python``.

    Nothing starts here: the first request starts the process. Another Python or environment (tests, a
    changed setting) shuts the old process down, so no request reaches a worker started otherwise.
    """
    global _session_worker
    if _session_worker is None:
        _session_worker = ManagedWorker()
        # Slicer unloads the modules (cleanup) on exit; atexit covers a Python that ends without that.
        atexit.register(_session_worker.shutdown)
    _session_worker.configure(python, child_environment(environment))
    return _session_worker


def shutdown_session_worker() -> None:
    """End the session's worker, if any (module cleanup and application exit); the next Segment starts one."""
    if _session_worker is not None:
        _session_worker.shutdown()


@dataclass
class RunStatus:
    """What the panel shows: percent (None while unknown), stage text, and new log lines."""

    percent: float | None = None
    stage: str = ""
    log: list[str] = field(default_factory=list)


class SegmentationRun(BackgroundRun):
    """One background segmentation of ``volume_node`` with ``entry``'s model.

    ``channel_nodes`` are the volumes of a multi-channel model's further channels, in its order; each is written
    on its own grid and the engine resamples it onto the first's. LesionSeg's own models run in the session's warm
    worker; an imported nnU-Net model runs as a one-shot ``lesionseg segment`` job with ``nnunet_options``
    (:mod:`LesionSegLib.nnunetmodels` says why). Both report the same events and cancel the same way.
    """

    what = "Segmentation"
    cancelled_text = "Segmentation cancelled; nothing was added to the scene."
    stderr_explains_failure = False  # the worker's stderr may hold an earlier request's lines

    def __init__(
        self,
        volume_node: Any,
        entry: ModelEntry,
        device: str,
        module: str,
        python: str,
        models_dir: str | Path | None = None,
        work_root: str | Path | None = None,
        timeout_s: float | None = None,
        environment: Mapping[str, str] | None = None,
        crop_body: bool = False,
        threshold: float | None = None,
        worker: ManagedWorker | None = None,
        channel_nodes: Sequence[Any] = (),
        nnunet_options: nnunetmodels.NnunetRunOptions | None = None,
        backend: str = "auto",
        precision: str | None = None,
        allow_modality: str | None = None,
        uncertainty: str = "none",
    ) -> None:
        image = check_input_volume(volume_node)
        problem = weights_problem(entry)
        if problem:
            raise ValueError(problem)
        names = channel_names(entry.spec)
        if 1 + len(channel_nodes) != len(names):
            raise ValueError(
                f"model {entry.spec.id!r} takes {len(names)} image(s) ({', '.join(names)}), "
                f"{1 + len(channel_nodes)} given; select one volume per channel"
            )
        further = []
        for name, node in zip(names[1:], channel_nodes, strict=True):
            problem = input_volume_problem(node)
            if problem:
                raise ValueError(f"{name} channel: {problem}")
            further.append(lesionseg.mrml.image_from_volume_node(node))
        self.nnunet = nnunetmodels.is_nnunet_spec(entry.spec)
        if self.nnunet and threshold is not None:
            raise ValueError(
                f"{entry.spec.id!r} is an nnU-Net model: the detection threshold applies to LesionSeg's own models; "
                "set the threshold to its model default"
            )
        problem = uncertainty_views.uncertainty_problem(entry.spec, uncertainty)
        if problem:
            raise ValueError(problem)
        self.uncertainty = uncertainty
        self.nnunet_options = nnunet_options or nnunetmodels.sidecar_options(entry.spec)
        # refused here, before anything is written or started; the spec's own cut counts when none is given
        self.threshold = check_threshold(entry.spec, threshold)
        self.volume_node, self.spec, self.device, self.module = volume_node, entry.spec, device, module
        self.work_dir = Path(tempfile.mkdtemp(prefix="LesionSeg-", dir=work_root))
        self.input_path = self.work_dir / "input.nrrd"
        self.output_path = self.work_dir / "labels.nrrd"
        self.input_image = image
        write_image(image, self.input_path, compress=False)  # read once, at once: gzip would cost seconds both ways
        self.channel_nodes = list(channel_nodes)
        self.input_paths = [self.input_path]
        for index, channel in enumerate(further, start=1):
            self.input_paths.append(self.work_dir / f"channel{index}.nrrd")
            write_image(channel, self.input_paths[-1], compress=False)
        self.python, self.environment = python, environment
        self.stderr_explains_failure = self.nnunet  # a one-shot job's stderr is this run's alone
        self.worker = None if self.nnunet else (worker or session_worker(python, environment))
        self.models_dir, self.crop_body, self.timeout_s = models_dir, crop_body, timeout_s
        self.user_threshold = threshold  # None: the spec's own cut, applied by the engine
        # as segment's --backend, --precision and --allow-modality: a run in the worker honours the same options
        self.options = {"backend": backend, "precision": precision, "allow_modality": allow_modality}
        self.options["uncertainty"] = uncertainty
        self.request: WorkerRequest | Job | None = None
        self.status = RunStatus(stage="waiting to start")
        self.started = 0.0
        self.warnings: list[str] = []  # the run's warnings: shown in the log and kept on the result node
        self.model_reused: bool | None = None  # whether the worker had the model loaded already
        self.uncertainty_result: dict[str, Any] | None = None  # the result event's uncertainty entry
        self.uncertainty_nodes: dict[str, Any] = {}  # the uncertainty volumes load_result added, by name
        self._tta_pass: int | None = None

    def start(self) -> SegmentationRun:
        self.started = time.monotonic()
        if self.nnunet:
            argv = nnunetmodels.segment_argv(
                self.python,
                self.spec.id,
                self.input_paths,
                self.output_path,
                self.device,
                self.nnunet_options,
                self.models_dir,
                self.crop_body,
            )
            self.request = Job(argv, self.timeout_s, self.output_path, env=child_environment(self.environment))
            self.request.start()
            self.status.stage = "starting"
            return self
        self.request = self.worker.submit(
            self.spec.id,
            self.input_paths if len(self.input_paths) > 1 else self.input_path,
            self.output_path,
            device=self.device,
            crop_body=self.crop_body,
            threshold=None if self.user_threshold is None else float(self.user_threshold),
            models_dir=self.models_dir,
            **self.options,
        )
        self.status.stage = "starting"
        return self

    @property
    def worker_pid(self) -> int | None:
        """The process that runs (or ran) this segmentation: the warm worker, or an nnU-Net model's own job."""
        return None if self.request is None else self.request.pid

    @property
    def job(self) -> WorkerRequest | Job | None:
        """The worker request (state, error text, stderr), as the background job was before the warm worker."""
        return self.request

    def poll(self) -> RunStatus:
        """Drain the request's events; returns the status with the log lines added since the last poll."""
        self.status.log = []
        if self.request is None:
            return self.status
        overdue = self.timeout_s is not None and time.monotonic() - self.started > self.timeout_s
        if overdue and not self.finished and not self.nnunet:  # a Job keeps its own time limit
            self.request.cancel(JobState.TIMED_OUT)
        for event in self.request.poll():
            self.read(event)
        return self.status

    def read(self, event: JobEvent) -> None:
        """Take in one event of the request: the status and log show it."""
        self._apply(event.kind, event.data)

    def _apply(self, kind: EventKind, data: dict[str, Any]) -> None:
        if kind is EventKind.STAGE:
            self.status.stage = str(data.get("stage", ""))
            self.status.log.append(f"Stage: {self.status.stage}")
        elif kind is EventKind.PROGRESS and data.get("percent") is not None:
            self.status.percent = float(data["percent"])
            if data.get("tta_pass") is not None:
                self._show_pass(int(data["tta_pass"]), int(data.get("tta_passes") or 0))
        elif kind in (EventKind.MESSAGE, EventKind.WARNING):
            text = data.get("text") or ""
            if text:
                self.status.log.append(("Warning: " if kind is EventKind.WARNING else "") + str(text))
            if text and kind is EventKind.WARNING:
                self.warnings.append(str(text))
        elif kind is EventKind.MODEL:
            self.model_reused = bool(data.get("reused"))
            if self.model_reused:
                self.status.log.append(f"Model {data.get('model')} already loaded; not loaded again")
            else:
                dropped = data.get("dropped")
                freed = f" (unloaded {dropped})" if dropped and dropped != data.get("model") else ""
                self.status.log.append(f"Model {data.get('model')} loaded in {data.get('seconds', 0):.1f} s{freed}")
        elif kind is EventKind.OUTPUT:
            self.status.log.append(str(data.get("text", "")))
        elif kind is EventKind.ERROR:
            self.status.log.append(f"Error: {data.get('type', '')}: {data.get('text', '')}")
        elif kind is EventKind.RESULT:
            seconds = data.get("seconds")
            self.status.log.append("Segmentation written" + (f" in {seconds:.1f} s" if seconds else ""))
            # The result event repeats the run's warnings: show any whose warning event was not seen.
            for text in data.get("warnings") or []:
                if str(text) not in self.warnings:
                    self.warnings.append(str(text))
                    self.status.log.append(f"Warning: {text}")
            if data.get("uncertainty"):
                self.uncertainty_result = dict(data["uncertainty"])
                self.status.log.append(uncertainty_views.cost_summary(self.uncertainty_result))
        elif kind is EventKind.FINISHED:
            state = JobEvent(kind, data).state
            self.status.stage = {
                JobState.SUCCEEDED: "done",
                JobState.CANCELLED: "cancelled",
                JobState.TIMED_OUT: "timed out",
            }.get(state, "failed")
            if state is JobState.SUCCEEDED:
                self.status.percent = 100.0

    def _show_pass(self, number: int, passes: int) -> None:
        # The stage line counts the test-time augmentation passes, each a sliding window over the whole volume.
        self.status.stage = f"inference (pass {number} of {passes})"
        if number != self._tta_pass:
            self._tta_pass = number
            self.status.log.append(f"Uncertainty pass {number} of {passes}")

    def uncertainty_files(self) -> dict[str, Path]:
        """The files a run with uncertainty wrote beside its labelmap, by name (``entropy``, ``mutual_information``,
        ``lesions_json``, ...); empty for a run without. They are deleted with the work folder by ``load_result``."""
        if self.uncertainty == "none":
            return {}
        return uncertainty_views.output_files(self.uncertainty_result, self.output_path)

    def load_result(self, scene: Any) -> Any:
        """A new segmentation node with the result (names, colours, terminology from the spec); a run with
        uncertainty also adds its volumes (:attr:`uncertainty_nodes`), shown over the input in the slice views, and
        puts the per-lesion rows and the cost on the node (:mod:`LesionSegLib.uncertainty`)."""
        self.require_success("the segmentation has not finished yet")
        labels = read_image(self.output_path)
        if not labels.same_grid(self.input_image):
            raise RuntimeError("the segmentation came back on another grid than the input volume; nothing was added")
        files = self.uncertainty_files()
        maps = uncertainty_views.read_uncertainty(files, self.input_image) if files else {}
        lesions = uncertainty_views.lesion_rows(files["lesions_json"]) if files else []
        name = result_name(self.volume_node, self.module, self.spec, self.threshold)
        node = lesionseg.mrml.segmentation_node_from_labelmap(scene, labels, name, self.spec.labels, self.volume_node)
        _set_terminology(node, self.spec.labels)
        for key, value in (
            (MODEL_ID_ATTRIBUTE, self.spec.id),
            (MODEL_VERSION_ATTRIBUTE, self.spec.version),
            (DEVICE_ATTRIBUTE, self.device),
            (CREATED_ATTRIBUTE, time.strftime("%Y-%m-%dT%H:%M:%S%z")),
            (SOURCE_VOLUME_ATTRIBUTE, self.volume_node.GetID() or ""),
            (THRESHOLD_ATTRIBUTE, "" if self.threshold is None else repr(self.threshold)),
            (WARNINGS_ATTRIBUTE, "\n".join(self.warnings)),
        ):
            node.SetAttribute(key, value)
        if files:
            self.uncertainty_nodes = uncertainty_views.add_uncertainty_volumes(
                scene, maps, name, self.spec, self.volume_node
            )
            uncertainty_views.record_on_result(node, self.uncertainty_result or {}, lesions, self.uncertainty_nodes)
        self.cleanup()
        return node


def _set_terminology(node: Any, labels: Iterable[Any]) -> None:
    entries = {label.name: terminology_entry(label.terminology) for label in labels}
    segmentation = node.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        entry = entries.get(segment.GetName())
        if entry:
            segment.SetTag(segment.GetTerminologyEntryTagName(), entry)


class SegmentingLogic:
    """Mixin for a module logic that segments: the model list, starting runs and downloads, loading results.

    A module sets ``moduleName`` (it names result nodes), ``lesionModels`` and ``segmentAction``.
    ``modelsDir`` (None: the engine's default folder), ``pythonExecutable`` (None: PythonSlicer),
    ``workRoot`` (where the input is written; None: the system temporary folder) and ``childEnvironment``
    (None: this process's environment) may be changed, e.g. by tests.
    """

    moduleName = ""
    lesionModels = False
    segmentAction = "Segment the input volume."  # Segment's tooltip when it can run
    modelsDir: str | Path | None = None
    pythonExecutable: str | None = None
    workRoot: str | Path | None = None
    childEnvironment: Mapping[str, str] | None = None

    def volumeImage(self, volumeNode: Any) -> Image:
        """The volume as the engine sees it (LPS geometry); raises ValueError for a volume it cannot use."""
        return lesionseg.mrml.image_from_volume_node(volumeNode)

    def describeVolume(self, volumeNode: Any) -> str:
        """One line on the volume's grid: size, spacing and orientation."""
        image = self.volumeImage(volumeNode)
        size = "×".join(str(n) for n in image.size)
        spacing = "×".join(f"{s:.3g}" for s in image.spacing)
        return f"{size} voxels, {spacing} mm, orientation {orientation_code(image.direction)}"

    def setInputVolume(self, parameterNode: Any, volumeNode: Any) -> str:
        """Choose the volume to segment, after checking the engine can read it; returns its description."""
        description = self.describeVolume(volumeNode)
        parameterNode.inputVolume = volumeNode
        logging.info(f"{self.moduleName} input: {volumeNode.GetName()} ({description})")
        return description

    def segmentReadiness(self, parameterNode: Any) -> tuple[bool, str]:
        """Whether Segment can run on the parameter node's input now, and the tooltip that says why or why not."""
        if parameterNode is None or not parameterNode.inputVolume:
            return False, "Select an input volume."
        problem = input_volume_problem(parameterNode.inputVolume)
        if problem:
            return False, problem
        return True, self.segmentAction

    def weightsHasher(self) -> BackgroundHasher:
        """The thread that hashes new large weights files, and the cache of hashes it fills (in the models folder)."""
        root = models_dir(self.modelsDir)
        hasher = getattr(self, "_weightsHasher", None)
        if hasher is None or hasher.cache.path.parent != root:
            hasher = self._weightsHasher = BackgroundHasher(HashCache(root))
        return hasher

    def verifyingModels(self) -> bool:
        """Whether weights are still being hashed in the background (list the models again when done)."""
        hasher = getattr(self, "_weightsHasher", None)
        return hasher is not None and hasher.pending

    def modelEntries(self) -> list[ModelEntry]:
        return model_entries(self.modelsDir, self.lesionModels, self.weightsHasher())

    def listModels(self) -> tuple[list[ModelEntry], str]:
        """The module's models and, when there are none to show, why: a bad models folder, or packages
        (jsonschema, ...) that a fresh Slicer lacks and that Segment offers to install."""
        try:
            entries = self.modelEntries()
        except ValueError as error:
            return [], str(error)
        except ImportError:
            return [], packages_problem() or "The model list could not be read; restart Slicer and try again."
        return entries, "" if entries else "No model found; add one to the LesionSeg models folder."

    def modelEntry(self, modelId: str) -> ModelEntry:
        """The model's entry, waiting for its weights to be hashed when that is under way (scripts, self-tests)."""
        entries = self.modelEntries()
        if any(entry.spec.id == modelId and entry.pending for entry in entries):
            self.weightsHasher().wait()
            entries = self.modelEntries()
        for entry in entries:
            if entry.spec.id == modelId:
                return entry
        raise ValueError(f"no model {modelId!r} for {self.moduleName}; choose one from the model list")

    def segmentOptions(self, parameterNode: Any) -> dict[str, Any]:
        """The run options a parameter node holds: ``cropBody``, ``lesionThreshold`` where the module has one
        (0 there means the model's own default), and ``uncertainty`` (a bool field: ``"tta"`` when on, else
        ``"none"``; a module without the field runs without)."""
        options: dict[str, Any] = {"cropBody": bool(getattr(parameterNode, "cropBody", False))}
        threshold = float(getattr(parameterNode, "lesionThreshold", 0.0) or 0.0)
        options["threshold"] = threshold if threshold > 0.0 else None
        options["uncertainty"] = "tta" if getattr(parameterNode, "uncertainty", False) else "none"
        return options

    def uncertaintyReadiness(self, parameterNode: Any, entry: ModelEntry | None) -> str:
        """Why the chosen model cannot run with the parameter node's Uncertainty option; empty when it can."""
        if entry is None or parameterNode is None:
            return ""
        return uncertainty_views.uncertainty_problem(entry.spec, self.segmentOptions(parameterNode)["uncertainty"])

    # --- channels and nnU-Net options: what the panel shows for the chosen model ------------------------------

    def modelChannels(self, entry: ModelEntry | None) -> list[str]:
        """The chosen model's input channels in order (the panel shows one volume selector per channel)."""
        return channel_names(None if entry is None else entry.spec)

    def channelVolumes(self, parameterNode: Any, entry: ModelEntry | None) -> list[Any]:
        """The volume chosen for each of the model's channels (None where none is)."""
        return channel_volumes(parameterNode, None if entry is None else entry.spec)

    def channelsReadiness(self, parameterNode: Any, entry: ModelEntry | None) -> str:
        """Why the chosen volumes cannot feed the model's further channels; empty when they can."""
        if entry is None or parameterNode is None:
            return ""
        return channels_problem(parameterNode, entry.spec)

    def isNnunetModel(self, entry: ModelEntry | None) -> bool:
        """Whether the advanced nnU-Net options apply to the model (an imported nnU-Net result folder)."""
        return entry is not None and nnunetmodels.is_nnunet_spec(entry.spec)

    def applyModelChoice(
        self, parameterNode: Any, entry: ModelEntry | None, scene: Any = None, resetOptions: bool = True
    ) -> None:
        """Prepare the parameter node for the chosen model: preselect a volume for each further channel whose name
        says it is that channel, and (``resetOptions``: a newly chosen model) set the nnU-Net options to the
        model's own (its sidecar's)."""
        if parameterNode is None or entry is None:
            return
        names = self.modelChannels(entry)
        first = parameterNode.inputVolume
        scene = scene or (first.GetScene() if first is not None else None)
        for name, channelField in zip(names[1:], CHANNEL_FIELDS[1:], strict=False):
            if scene is None or not hasattr(parameterNode, channelField) or getattr(parameterNode, channelField):
                continue
            found = default_channel_volume(scene, name, exclude=first)
            taken = [getattr(parameterNode, other, None) for other in CHANNEL_FIELDS]
            if found is not None and found not in taken:  # one volume never feeds two channels
                setattr(parameterNode, channelField, found)
        if resetOptions and self.isNnunetModel(entry) and hasattr(parameterNode, "nnunetCheckpoint"):
            defaults = nnunetmodels.sidecar_options(entry.spec)
            parameterNode.nnunetFolds = " ".join(defaults.folds)
            parameterNode.nnunetCheckpoint = defaults.checkpoint
            parameterNode.nnunetMirroring = defaults.mirroring
            parameterNode.nnunetTileStepSize = defaults.tile_step_size

    def nnunetOptions(self, parameterNode: Any, entry: ModelEntry) -> nnunetmodels.NnunetRunOptions | None:
        """The nnU-Net run options the parameter node holds for an nnU-Net model (None for LesionSeg's own);
        the sidecar's defaults stand in for a parameter node without them. ValueError for unusable folds."""
        if not self.isNnunetModel(entry):
            return None
        defaults = nnunetmodels.sidecar_options(entry.spec)
        if parameterNode is None or not hasattr(parameterNode, "nnunetCheckpoint"):
            return defaults
        return nnunetmodels.NnunetRunOptions(
            folds=nnunetmodels.parse_folds(parameterNode.nnunetFolds),
            checkpoint=parameterNode.nnunetCheckpoint or defaults.checkpoint,
            mirroring=parameterNode.nnunetMirroring or "auto",
            tile_step_size=float(parameterNode.nnunetTileStepSize or defaults.tile_step_size),
        )

    def startSegmentation(
        self,
        volumeNode: Any,
        entry: ModelEntry,
        device: str = "auto",
        cropBody: bool = False,
        threshold: float | None = None,
        channelVolumes: Sequence[Any] = (),
        nnunetOptions: nnunetmodels.NnunetRunOptions | None = None,
        backend: str = "auto",
        precision: str | None = None,
        allowModality: str | None = None,
        uncertainty: str = "none",
    ) -> SegmentationRun:
        """Write the volume for the child, start the job, and return the run to poll.

        ``cropBody`` skips the air around the body; ``threshold`` (models with one foreground label) is the
        probability above which a voxel is foreground, None for the model's default. ``channelVolumes`` are the
        further channels' volumes of a multi-channel model; ``nnunetOptions`` an nnU-Net model's run options
        (None: its sidecar's). ``backend``, ``precision``, ``allowModality`` and ``uncertainty`` (``"none"`` or
        ``"tta"``; an nnU-Net model is refused with ``"tta"``) are ``segment``'s options of those names (LesionSeg's
        own models, in the warm worker).
        """
        python = self.pythonExecutable or slicer_python()
        run = SegmentationRun(
            volumeNode,
            entry,
            device,
            self.moduleName,
            python,
            self.modelsDir,
            self.workRoot,
            None,
            self.childEnvironment,
            crop_body=cropBody,
            threshold=threshold,
            channel_nodes=channelVolumes,
            nnunet_options=nnunetOptions,
            backend=backend,
            precision=precision,
            allow_modality=allowModality,
            uncertainty=uncertainty,
        )
        return run.start()

    def loadSegmentationResult(self, run: SegmentationRun, scene: Any) -> Any:
        return run.load_result(scene)

    def modelChosen(self, modelId: str) -> None:
        """The user chose ``modelId``: the warm worker unloads another model it holds, freeing its memory now."""
        if _session_worker is not None:
            _session_worker.release(unless=modelId)

    def shutdownWorker(self) -> None:
        """End the session's warm worker (module cleanup, application exit); the next Segment starts another."""
        shutdown_session_worker()

    def startDownload(self, modelId: str) -> Job:
        python = self.pythonExecutable or slicer_python()
        return download_job(modelId, python, self.modelsDir, self.childEnvironment).start()

    def segmentBlocking(
        self,
        volumeNode: Any,
        modelId: str,
        device: str = "auto",
        timeout_s: float = 600,
        cropBody: bool = False,
        threshold: float | None = None,
        channelVolumes: Sequence[Any] = (),
        nnunetOptions: nnunetmodels.NnunetRunOptions | None = None,
        uncertainty: str = "none",
    ) -> Any:
        """Segment and wait (scripts and self-tests; the widget polls instead). Returns the new node."""
        run = self.startSegmentation(
            volumeNode,
            self.modelEntry(modelId),
            device,
            cropBody,
            threshold,
            channelVolumes,
            nnunetOptions,
            uncertainty=uncertainty,
        )
        deadline = time.monotonic() + timeout_s
        while not run.finished:
            if time.monotonic() > deadline:
                run.cancel()
                raise RuntimeError(f"segmenting took longer than {timeout_s} s; cancelled")
            time.sleep(0.1)
        run.poll()
        if run.state is not JobState.SUCCEEDED:
            run.cleanup()
            raise RuntimeError(run.failure())
        return run.load_result(volumeNode.GetScene())
