"""A cohort: pairing predictions with references, and the mean ± std summary papers report."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lesionseg.io import IMAGE_SUFFIXES
from lesionseg.metrics.detection import pool_detection
from lesionseg.metrics.masks import METRIC_KEYS, mask_metrics

log = logging.getLogger(__name__)

LESION_COUNT_KEYS = ("n_ref", "n_pred", "tp", "fn", "fp", "tp_pred")
LESION_MEAN_KEYS = ("sensitivity", "precision", "fp", "fp_volume_ml", "fn_volume_ml", "dice")


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case; ``image`` is the optional intensity image for the report."""

    case: str
    pred: Path
    ref: Path
    image: Path | None = None


def case_name(path: Path) -> str | None:
    """The file name without its image suffix, or None when it is not an image file."""
    lower = path.name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def _images_by_case(folder: Path, role: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise ValueError(f"the {role} folder {folder} is not a folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        name = case_name(path)
        if name is None or path.name.startswith(".") or not path.is_file():
            continue
        if name in found:
            raise ValueError(
                f"the {role} folder holds two images for case {name!r} ({found[name].name}, {path.name}); keep one"
            )
        found[name] = path
    return found


def pair_folders(pred_dir: Path, ref_dir: Path, image_dir: Path | None = None) -> list[CaseFiles]:
    """Pair predictions and references by file name (the image suffix may differ)."""
    preds = _images_by_case(Path(pred_dir), "prediction")
    refs = _images_by_case(Path(ref_dir), "reference")
    images = _images_by_case(Path(image_dir), "image") if image_dir is not None else {}
    if not refs:
        raise ValueError(f"the reference folder {ref_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    missing = sorted(set(refs) - set(preds))
    if missing:
        shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
        raise ValueError(
            f"{len(missing)} reference case(s) have no prediction in {pred_dir}: {shown}; "
            "name each prediction like its reference, or list the cases to evaluate in --pairs CSV"
        )
    extra = sorted(set(preds) - set(refs))
    if extra:
        log.warning("skipping %d prediction(s) without a reference: %s", len(extra), ", ".join(extra[:5]))
    return [CaseFiles(name, preds[name], refs[name], images.get(name)) for name in sorted(refs)]


def read_pairs_csv(path: Path) -> list[CaseFiles]:
    """Cases from a CSV with columns ``case,pred,ref`` (and optionally ``image``); relative paths are from the CSV."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such pairs file: {path}")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        lacking = [c for c in ("case", "pred", "ref") if c not in columns]
        if lacking:
            raise ValueError(f"{path.name} lacks the column(s) {', '.join(lacking)}; it needs a header case,pred,ref")
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    cases: list[CaseFiles] = []
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        if not row["case"] or not row["pred"] or not row["ref"]:
            raise ValueError(f"{path.name} line {line}: case, pred and ref must all be filled in")
        if row["case"] in seen:
            raise ValueError(f"{path.name} line {line}: case {row['case']!r} is listed twice")
        seen.add(row["case"])
        image = path.parent / row["image"] if row.get("image") else None
        cases.append(CaseFiles(row["case"], path.parent / row["pred"], path.parent / row["ref"], image))
    if not cases:
        raise ValueError(f"{path.name} lists no cases")
    return cases


def fill_missing_labels(cases: Sequence[dict[str, Any]]) -> None:
    """Give every case a row for every label seen in the cohort; a label absent from a case is empty in both."""
    names: dict[str, str] = {}
    for case in cases:
        for key, row in case["labels"].items():
            names.setdefault(key, row["name"])
    empty = np.zeros((1, 1, 1), dtype=bool)
    for case in cases:
        for key in names:
            if key not in case["labels"]:
                spacing = np.asarray(case["grid"]["spacing_mm"])
                case["labels"][key] = {"name": names[key], **mask_metrics(empty, empty, spacing)}
        case["labels"] = dict(sorted(case["labels"].items(), key=lambda item: int(item[0])))


def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation of the values that are not None, and how many there were."""
    kept = np.array([v for v in values if v is not None], dtype=np.float64)
    return {
        "mean": float(kept.mean()) if len(kept) else None,
        "std": float(kept.std(ddof=1)) if len(kept) > 1 else None,
        "n": len(kept),
    }


def _summarize_rows(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {key: mean_std([row[key] for row in rows]) for key in METRIC_KEYS}
    out["empty_cases"] = {
        kind: sum(row["empty"] == kind for row in rows) for kind in ("both", "prediction", "reference")
    }
    return out


def summarize(cases: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std of every metric over the cases, per label, for the foreground, and lesion-wise."""
    fill_missing_labels(cases)
    labels: dict[str, Any] = {}
    for key in cases[0]["labels"] if cases else []:
        rows = [case["labels"][key] for case in cases]
        labels[key] = {"name": rows[0]["name"], **_summarize_rows(rows)}
    lesion_rows = [case["lesions"] for case in cases]
    totals = {key: int(sum(row[key] for row in lesion_rows)) for key in LESION_COUNT_KEYS}
    lesions: dict[str, Any] = {
        "totals": totals,
        # Pooled over the cohort, so cases with many lesions weigh more than in the per-case mean.
        "sensitivity_pooled": totals["tp"] / totals["n_ref"] if totals["n_ref"] else None,
        "fp_per_case": totals["fp"] / len(cases) if cases else None,
    }
    lesions.update({key: mean_std([row[key] for row in lesion_rows]) for key in LESION_MEAN_KEYS})
    summary = {
        "n_cases": len(cases),
        "labels": labels,
        "foreground": _summarize_rows([case["foreground"] for case in cases]),
        "lesions": lesions,
    }
    if cases and all("detection" in case for case in cases):
        summary["detection"] = pool_detection([case["detection"] for case in cases])
    return summary
