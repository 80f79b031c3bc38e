"""The demo a newcomer runs first: one synthetic patient, end to end, into a report folder.

Synthesize a study as DICOM, read it back, segment the spleen and the metastases with the demo
models, evaluate against the phantom's truth, export a validated RTSTRUCT, and write a report.
Everything here is synthetic and the demo models were trained on phantoms only: not for clinical use.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from lesionseg.image import Image
from lesionseg.io.atomic import write_bytes_atomic, write_json_atomic
from lesionseg.labels import LabelInfo
from lesionseg.orientation import orientation_code, reorient

DEMO_MODELS = {"spleen": "demo-spleen", "metastasis": "demo-lesion"}
# The demo's own label values in its combined prediction and truth maps.
DEMO_LABELS = [LabelInfo(1, "Spleen", (0.62, 0.37, 0.72)), LabelInfo(2, "Metastasis", (0.95, 0.15, 0.15))]
DEMO_SEED = 7  # case 0 of this seed has six lesions of all three kinds, stored PLS
MIN_LESION_MM3 = 100.0  # predictions smaller than this are not counted, as in the brain-metastasis reports
# Detection by size (lesionseg evaluate --min-reference-mm): a phantom lesion of 10 mm or more counts, and any
# prediction touching it finds it.
MIN_REFERENCE_MM = 10.0


def demo_model_folder(model_id: str) -> Path:
    folder = Path(str(resources.files("lesionseg.resources").joinpath("models", model_id)))
    if not (folder / "spec.json").is_file():
        raise FileNotFoundError(
            f"the demo model {model_id!r} is missing from {folder}; reinstall LesionSeg or run "
            "scripts/train_demo_models.py to rebuild it"
        )
    return folder


class StepTimer:
    """Prints numbered steps with their durations, so a newcomer sees where the time goes."""

    def __init__(self, say: Callable[[str], None]):
        self.say = say
        self.count = 0
        self.times: dict[str, float] = {}

    def run(self, title: str, work: Callable[[], Any]) -> Any:
        self.count += 1
        self.say(f"[{self.count}/7] {title} ...")
        started = time.perf_counter()
        result = work()
        self.times[title] = round(time.perf_counter() - started, 2)
        self.say(f"      done in {self.times[title]:.1f} s")
        return result


def progress_bar(prefix: str, stream=sys.stderr) -> Callable[[dict], None]:
    """An event sink drawing the inference's real percent as a bar on one terminal line."""
    state = {"last": -1}

    def sink(event: dict) -> None:
        if event.get("event") != "progress":
            return
        percent = int(event.get("percent", 0))
        if percent == state["last"]:
            return
        state["last"] = percent
        filled = percent * 30 // 100
        stream.write(
            f"\r      {prefix:<11} [{'#' * filled}{'.' * (30 - filled)}] {percent:3d}% {event.get('stage', '')}   "
        )
        if percent >= 100:
            stream.write("\n")
        stream.flush()

    return sink


def truth_labelmap(phantom_label: Image) -> Image:
    """The phantom's labels mapped to the demo's: spleen 1, any metastasis 2."""
    from lesionseg.data import LABEL

    lookup = np.zeros(256, np.uint8)
    lookup[LABEL["spleen"]] = 1
    lookup[LABEL["bone_metastasis"]] = 2
    lookup[LABEL["nodal_metastasis"]] = 2
    return phantom_label.with_array(lookup[phantom_label.array])


def validate_with_dciodvfy(path: Path) -> dict[str, Any]:
    """Run dicom3tools' IOD validator when it is installed; the demo reports what it said."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        return {"validator": "dciodvfy", "ran": False, "note": "dciodvfy not installed (apt-get install dicom3tools)"}
    done = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    lines = (done.stdout + done.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    return {"validator": "dciodvfy", "ran": True, "exit_code": done.returncode, "errors": len(errors)}


def coronal_overlay(path: Path, image: Image, pred: Image, truth: Image) -> Path:
    """A coronal slice through the spleen's centre: truth solid, prediction dashed, over the CT."""
    from lesionseg.orientation import reorient
    from lesionseg.report.overlays import render_slice

    # LPS re-indexing: i to the left, j to the back, k up; a coronal slice is fixed j.
    ct, p, t = (reorient(x, "LPS") for x in (image, pred, truth))
    organ = np.argwhere(t.array == 1)
    j = int(np.median(organ[:, 1])) if organ.size else t.array.shape[1] // 2
    # rows run superior to inferior, so flip k; columns are i (patient right to left, as viewers show)
    background = ct.array[::-1, j, :].astype(np.float32)
    labels = {info.value: info for info in DEMO_LABELS}
    return render_slice(
        path,
        p.array[::-1, j, :],
        t.array[::-1, j, :],
        (float(ct.spacing[0]), float(ct.spacing[2])),
        labels,
        f"coronal slice {j}: truth solid, prediction dashed",
        background=background,
        window=(-160.0, 240.0),
        edges=("R", "L", "S", "I"),
    )


def _lesion_kind(truth: list[dict[str, Any]], centre_lps: np.ndarray) -> str:
    """The phantom's kind of the lesion at ``centre_lps`` (sclerotic, lytic, node), or "" when none is there."""
    from lesionseg.data.lesions import truth_lesion_at

    drawn = truth_lesion_at(truth, centre_lps)
    return str(drawn["kind"]) if drawn is not None else ""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value)
    return "" if value is None else str(value)


def run_demo(output: str | Path, device: str = "auto", say: Callable[[str], None] = print) -> Path:
    """Run the whole demo into ``output`` (replaced if it holds an earlier demo); returns the report folder."""
    from lesionseg.data import SynthOptions, generate_case, write_case
    from lesionseg.dicom import read_dicom_volume
    from lesionseg.inference.output import write_labelmap
    from lesionseg.inference.pipeline import load_model, segment_image
    from lesionseg.io import read_image
    from lesionseg.metrics import evaluate_case, lesion_table
    from lesionseg.report.document import Section, write_report
    from lesionseg.report.overlays import case_overlays
    from lesionseg.rtstruct import export_rtstruct

    output = Path(output)
    marker = output / ".lesionseg-demo"  # written first, so a rerun may replace even a failed demo's folder
    if output.exists():
        if not marker.is_file() and any(output.iterdir()):
            raise ValueError(f"{output} is not empty and holds no earlier demo; choose a new --output folder")
        shutil.rmtree(output)
    output.mkdir(parents=True)
    marker.write_text("written by lesionseg demo; the whole folder is replaced on the next run\n", encoding="utf-8")
    report_dir = output / "report"
    report_dir.mkdir()
    steps = StepTimer(say)
    folders = {name: demo_model_folder(model_id) for name, model_id in DEMO_MODELS.items()}

    def synthesize() -> Path:
        case = generate_case(DEMO_SEED, 0, SynthOptions(size="small", max_lesions=6))
        return write_case(case, output / "study", dicom=True)

    study = steps.run("Synthesizing a patient study as DICOM (synthetic phantom)", synthesize)

    def on_dicom_grid(image: Image, reference: Image) -> Image:
        # The NIfTI keeps the phantom's storage order (RAS, feet first...); the series reads back in
        # its own slice order. Re-indexing is lossless, so the two must then match voxel for voxel.
        moved = reorient(image, orientation_code(reference.direction))
        if not moved.same_grid(reference):
            raise RuntimeError("the DICOM series read back lies elsewhere than the image it was written from")
        return moved

    def read_back() -> Image:
        image = read_dicom_volume(study / "dicom")
        if not np.array_equal(on_dicom_grid(read_image(study / "image.nii.gz"), image).array, image.array):
            raise RuntimeError("the DICOM series read back differs from the image it was written from")
        return image

    ct = steps.run("Reading the DICOM series back", read_back)
    say(f"      {ct.size[0]}x{ct.size[1]}x{ct.size[2]} voxels at {np.round(ct.spacing, 2).tolist()} mm")

    def segment() -> tuple[Image, dict[str, Any]]:
        combined = np.zeros(ct.array.shape, np.uint8)
        used = {}
        for value, (name, folder) in enumerate(folders.items(), start=1):
            model = load_model(folder, device)
            bar = progress_bar(name)
            label, _ = segment_image(ct, model, device, bar)
            bar({"event": "progress", "percent": 100, "stage": "done"})
            combined[(label.array > 0) & (combined == 0)] = value
            used[name] = {"id": model.spec.id, "version": model.spec.version, "device": str(model.device)}
        return ct.with_array(combined), used

    prediction, models_used = steps.run("Segmenting the spleen and the metastases", segment)
    prediction_path = write_labelmap(prediction, DEMO_LABELS, output / "prediction.seg.nrrd")

    truth = truth_labelmap(on_dicom_grid(read_image(study / "label.nii.gz"), ct))

    def evaluate() -> dict[str, Any]:
        names = {info.value: info.name for info in DEMO_LABELS}
        return evaluate_case(
            prediction,
            truth,
            label_names=names,
            lesion_labels=[2],
            min_lesion_mm3=MIN_LESION_MM3,
            min_reference_mm=MIN_REFERENCE_MM,
            min_prediction_mm3=MIN_LESION_MM3,
        )

    metrics = steps.run("Evaluating against the phantom's truth", evaluate)
    write_json_atomic(report_dir / "metrics.json", metrics)

    def rtstruct() -> tuple[Path, dict[str, Any]]:
        path = export_rtstruct(
            study / "dicom",
            prediction,
            output / "RS_demo.dcm",
            labels=DEMO_LABELS,
            interpreted_type={1: "ORGAN", 2: "GTV"},
            say=lambda text: say(f"      {text}"),
        )
        return path, validate_with_dciodvfy(path)

    rs_path, validation = steps.run("Exporting an RTSTRUCT and validating it", rtstruct)

    def report() -> list[Path]:
        labels = {info.value: info for info in DEMO_LABELS}
        images = case_overlays(report_dir, "demo", prediction, truth, image=ct, count=2, labels=labels)
        images.append(coronal_overlay(report_dir / "demo_coronal.png", ct, prediction, truth))
        lesions = lesion_table(prediction, ct, MIN_LESION_MM3, labels=[2])
        columns = ["id", "volume_ml", "longest_axial_diameter_mm", "centroid_ras_mm", "mean_hu", "max_hu"]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(lesions)
        write_bytes_atomic(report_dir / "lesions.csv", buffer.getvalue().encode("utf-8"))
        label_rows = [
            [
                info.name,
                *(_cell(metrics["labels"][str(info.value)].get(key)) for key in ("dice", "iou", "hd95_mm", "assd_mm")),
            ]
            for info in DEMO_LABELS
        ]
        detection = metrics["detection"]
        kinds = json.loads((study / "truth.json").read_text(encoding="utf-8"))["lesions"]
        phantom_rows = [
            [
                str(number),
                _lesion_kind(kinds, ct.world(np.asarray(row["centre_kji"])[::-1])),
                f"{row['extent_mm']:.0f}",
                f"{row['volume_mm3'] / 1000:.2f}",
                "yes" if row["hit"] else "no",
                "" if row["counted"] else f"not counted (under {MIN_REFERENCE_MM:g} mm)",
            ]
            for number, row in enumerate(detection["reference_lesions"], start=1)
        ]
        sections = [
            Section(
                "About this demo",
                text="SYNTHETIC DATA. The patient is a computed phantom and the models were trained on phantoms "
                "only: not for clinical use.",
            ),
            Section(
                "Segmentation metrics against the phantom truth",
                header=["structure", "Dice", "IoU", "HD95 (mm)", "ASSD (mm)"],
                rows=label_rows,
            ),
            Section(
                "Lesion detection",
                text=f"Found {detection['tp']} of the phantom's {detection['n_ref']} lesions of {MIN_REFERENCE_MM:g} "
                f"mm or more (any overlapping prediction finds a lesion), with {detection['fp']} false positive(s) of "
                f"{MIN_LESION_MM3:g} mm³ or more.",
                header=["lesion", "kind", "long axis (mm)", "volume (mL)", "found", "note"],
                rows=phantom_rows,
            ),
            Section(
                "Predicted lesions", header=columns, rows=[[_cell(row.get(c)) for c in columns] for row in lesions]
            ),
            Section(
                "RTSTRUCT",
                text=f"{rs_path.resolve()} (dciodvfy: "
                + (f"{validation['errors']} errors" if validation["ran"] else validation["note"])
                + ")",
            ),
            Section("Overlays", images=[p.name for p in images]),
        ]
        return write_report(report_dir, "LesionSeg demo (synthetic)", sections) + images

    written = steps.run("Writing the report", report)
    summary = {
        "study": str(study),
        "prediction": str(prediction_path),
        "rtstruct": str(rs_path),
        "rtstruct_validation": validation,
        "models": models_used,
        "report": [str(p) for p in written],
        "seconds": steps.times,
    }
    write_json_atomic(output / "demo.json", summary)
    say(f"[7/7] Report: {(report_dir / 'report.html').resolve()}")
    return report_dir
