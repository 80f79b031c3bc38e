"""Converting every image series under a folder to NIfTI, with a JSON sidecar of key tags."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lesionseg import __version__
from lesionseg.dicom.series import Scan, Series, scan_folder
from lesionseg.dicom.volume import Policy, load_series
from lesionseg.io import write_image
from lesionseg.io.atomic import write_json_atomic
from lesionseg.orientation import orientation_code

# Tags copied to the sidecar: enough to tell series apart and to trace the file back to the scanner.
SIDECAR_TAGS = (
    "PatientID",
    "PatientName",
    "StudyInstanceUID",
    "StudyID",
    "StudyDate",
    "StudyDescription",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "Modality",
    "FrameOfReferenceUID",
    "Manufacturer",
    "ManufacturerModelName",
    "BodyPartExamined",
    "ConvolutionKernel",
    "KVP",
    "SliceThickness",
    "PixelSpacing",
    "ImageType",
)
MAX_NAME_LENGTH = 64


def safe_name(text: str, fallback: str) -> str:
    """A file-name part made of letters, digits, '.', '_' and '-' only (never '.' or '..')."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_text).strip("._-")[:MAX_NAME_LENGTH].rstrip("._-")
    return cleaned or fallback


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def _tag_value(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [_tag_value(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) if isinstance(value, float) else int(value)
    if type(value).__name__ in ("DSfloat", "DSdecimal"):
        return float(value)
    if type(value).__name__ == "IS":
        return int(value)
    return str(value)


@dataclass
class Converted:
    series: Series
    image_path: Path | None = None
    sidecar_path: Path | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class Conversion:
    scan: Scan
    converted: list[Converted]


def output_names(scan: Scan) -> dict[str, tuple[str, str, str]]:
    """(patient, study, series) path parts for each volume, unique where the UIDs differ."""
    names: dict[str, tuple[str, str, str]] = {}
    study_names: dict[tuple[str, str], str] = {}  # (patient part, study UID) -> study part
    used_studies: set[tuple[str, str]] = set()
    used_series: set[tuple[str, str, str]] = set()
    for series in scan.volumes():
        first = series.first
        patient = safe_name(first.text("PatientID") or first.text("PatientName"), "unknown_patient")
        study_key = (patient, series.study_uid)
        if study_key not in study_names:
            label = "_".join(p for p in (first.text("StudyDate"), first.text("StudyDescription")) if p)
            study = safe_name(label or first.text("StudyID"), "study")
            if (patient, study) in used_studies:
                study = f"{study}_{_short_hash(series.study_uid)}"
            used_studies.add((patient, study))
            study_names[study_key] = study
        study = study_names[study_key]
        number = first.text("SeriesNumber")
        label = "_".join(p for p in (number, first.text("SeriesDescription")) if p)
        name = safe_name(label, "series")
        if "#" in series.key:
            name = f"{name}_part{series.key.rsplit('#', 1)[1]}"
        if (patient, study, name) in used_series:
            name = f"{name}_{_short_hash(series.key)}"
        used_series.add((patient, study, name))
        names[series.key] = (patient, study, name)
    return names


def sidecar(series: Series, image, warnings: list[str], source: Path) -> dict[str, Any]:
    dataset = series.first.dataset
    tags = {k: _tag_value(dataset.get(k)) for k in SIDECAR_TAGS if k in dataset}
    tags["TransferSyntaxUID"] = series.first.transfer_syntax
    return {
        "source_folder": str(source),
        "series_key": series.key,
        "files": [str(s.path.relative_to(source)) for s in series.geometry.slices],
        "excluded_files": [{"file": str(p.relative_to(source)), "reason": why} for p, why in series.excluded],
        "tags": tags,
        "geometry": {
            "size_ijk": list(image.size),
            "spacing_mm": [float(v) for v in image.spacing],
            "origin_lps_mm": [float(v) for v in image.origin],
            "direction_lps": np.asarray(image.direction).tolist(),
            "orientation": orientation_code(image.direction),
        },
        "warnings": warnings,
        "converter": f"lesionseg {__version__}",
    }


def convert_folder(
    folder: str | os.PathLike,
    output: str | os.PathLike,
    *,
    series_uid: str | None = None,
    irregular: Policy = "correct",
    tilt: Policy = "correct",
) -> Conversion:
    """Write each image series as ``output/<patient>/<study>/<series>.nii.gz`` plus ``.json``.

    All or nothing: when a file cannot be read or a series cannot be built, ValueError names every
    problem and nothing is written.  A series missing one unreadable file would otherwise be written with
    that slice interpolated, and an exit status of failure beside files that look complete misleads.
    Volumes are written into a hidden staging folder under ``output`` and moved into place at the end.
    A series without a usable PixelSpacing is converted with 1 mm pixels assumed, and says so loudly.
    """
    folder, output = Path(folder), Path(output)
    scan = scan_folder(folder)
    if scan.unreadable:
        listing = "; ".join(f"{p} ({why})" for p, why in scan.unreadable[:3])
        more = f" and {len(scan.unreadable) - 3} more" if len(scan.unreadable) > 3 else ""
        raise ValueError(
            f"{len(scan.unreadable)} file(s) under {folder} look like DICOM but cannot be read: {listing}{more}. "
            "Nothing was written (a series missing a slice would be converted with it interpolated); "
            "replace or remove the broken files first"
        )
    names = output_names(scan)
    chosen = scan.volumes() if series_uid is None else [s for s in scan.find(series_uid) if s.geometry is not None]
    if series_uid is not None and not chosen:
        raise ValueError(f"no image series {series_uid!r} under {folder}; run `lesionseg dicom scan` to list them")
    results: list[Converted] = []
    failures: list[str] = []
    staging = Path(tempfile.mkdtemp(prefix=".lesionseg-convert-", dir=_made(output))) if chosen else None
    try:
        for series in chosen:
            patient, study, name = names[series.key]
            relative = Path(patient) / study / f"{name}.nii.gz"
            try:
                # The warnings go to the sidecar and the caller's report instead of the log.
                volume = load_series(
                    series, irregular=irregular, tilt=tilt, log_warnings=False, assume_pixel_spacing=True
                )
            except ValueError as error:
                failures.append(f"{series.key}: {error}")
                continue
            if failures:
                continue  # nothing will be written: skip the work of writing this one
            write_image(volume.image, staging / relative)
            sidecar_relative = relative.with_name(f"{name}.json")
            write_json_atomic(staging / sidecar_relative, sidecar(series, volume.image, volume.warnings, folder))
            results.append(Converted(series, relative, sidecar_relative, volume.warnings))
        if failures:
            others = " (convert the others one by one with --series UID)" if len(chosen) > 1 else ""
            raise ValueError(
                f"{len(failures)} of {len(chosen)} series cannot be converted, so nothing was written{others}: "
                + "; ".join(failures)
            )
        for item in results:
            for attribute in ("image_path", "sidecar_path"):
                relative = getattr(item, attribute)
                target = output / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / relative, target)
                setattr(item, attribute, target)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return Conversion(scan, results)


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder
