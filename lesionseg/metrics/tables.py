"""Writing evaluation results as JSON or CSV, atomically and without NaN or infinity."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lesionseg.io.atomic import write_bytes_atomic
from lesionseg.metrics.cohort import LESION_COUNT_KEYS
from lesionseg.metrics.descriptors import MASK_METRIC_KEYS

# Columns are result keys; titles and units live in the metrics' descriptors (lesionseg.metrics.descriptors).
LABEL_COLUMNS = ("label", "name", *MASK_METRIC_KEYS, "empty")
LESION_COLUMNS = (
    *LESION_COUNT_KEYS,
    "sensitivity",
    "precision",
    "fp_volume_ml",
    "fn_volume_ml",
    "dice",
    "empty",
)


def write_json(path: Path, result: dict[str, Any]) -> list[Path]:
    # allow_nan=False: a NaN or infinity reaching the output is a bug; fail rather than write invalid JSON.
    text = json.dumps(result, indent=2, allow_nan=False)
    write_bytes_atomic(path, (text + "\n").encode("utf-8"))
    return [Path(path)]


def _csv_bytes(columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row.get(key) is None else row[key] for key in columns})
    return buffer.getvalue().encode("utf-8")


def lesion_csv_path(path: Path) -> Path:
    """Where the lesion-wise CSV goes beside a per-label CSV: ``metrics.csv`` → ``metrics_lesions.csv``."""
    return path.with_name(f"{path.stem}_lesions{path.suffix}")


def write_case_csv(path: Path, result: dict[str, Any]) -> list[Path]:
    """One row per label in ``path``, and the lesion-wise row beside it; returns both paths."""
    rows = [{"label": key, **row} for key, row in result["labels"].items()]
    write_bytes_atomic(path, _csv_bytes(LABEL_COLUMNS, rows))
    lesion_path = lesion_csv_path(path)
    write_bytes_atomic(lesion_path, _csv_bytes(LESION_COLUMNS, [result["lesions"]]))
    return [path, lesion_path]


def write_cohort_csv(path: Path, result: dict[str, Any]) -> list[Path]:
    """Per case and label rows, then ``mean`` and ``std`` rows per label; lesion-wise rows beside it."""
    rows: list[dict[str, Any]] = []
    for case in result["cases"]:
        rows += [{"case": case["case"], "label": key, **row} for key, row in case["labels"].items()]
    for key, summary in result["summary"]["labels"].items():
        for stat in ("mean", "std"):
            rows.append(
                {"case": stat, "label": key, "name": summary["name"], **{m: summary[m][stat] for m in MASK_METRIC_KEYS}}
            )
    write_bytes_atomic(path, _csv_bytes(("case", *LABEL_COLUMNS), rows))
    lesion_rows = [{"case": case["case"], **case["lesions"]} for case in result["cases"]]
    lesion_summary = result["summary"]["lesions"]
    lesion_rows.append({"case": "total", **lesion_summary["totals"]})
    for stat in ("mean", "std"):
        stats = {k: v[stat] for k, v in lesion_summary.items() if isinstance(v, dict) and "mean" in v}
        lesion_rows.append({"case": stat, **stats})
    lesion_path = lesion_csv_path(path)
    write_bytes_atomic(lesion_path, _csv_bytes(("case", *LESION_COLUMNS), lesion_rows))
    return [path, lesion_path]


DETECTION_COLUMNS = (
    "threshold",
    "n_cases",
    "n_ref",
    "tp",
    "fn",
    "fp",
    "sensitivity",
    "fp_per_case",
    "dice_pooled",
    "dice_mean",
)


def detection_csv_path(path: Path) -> Path:
    """Where detection by size and the FROC points go beside a CSV: ``metrics.csv`` → ``metrics_detection.csv``."""
    return path.with_name(f"{path.stem}_detection{path.suffix}")


def write_detection_csv(path: Path, pooled: dict[str, Any], froc: Sequence[dict[str, Any]]) -> list[Path]:
    """The operating point (threshold ``evaluated``), then one row per FROC threshold."""
    rows = [{"threshold": "evaluated", **pooled}, *froc]
    target = detection_csv_path(path)
    write_bytes_atomic(target, _csv_bytes(DETECTION_COLUMNS, rows))
    return [target]
