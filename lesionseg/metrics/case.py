"""All metrics of one prediction against its reference: per label, foreground, lesion-wise."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from lesionseg.image import Image, require_same_grid
from lesionseg.metrics.detection import lesion_detection
from lesionseg.metrics.lesions import DEFAULT_CONNECTIVITY, lesion_metrics
from lesionseg.metrics.masks import dice_coefficient, label_metrics, mask_metrics


def as_labelmap(image: Image, what: str) -> np.ndarray:
    """The voxel array as non-negative integers, or a clear error when it is not a labelmap."""
    array = image.array
    if np.issubdtype(array.dtype, np.floating):
        if not np.array_equal(array, np.round(array)):
            raise ValueError(
                f"the {what} holds non-integer values (e.g. probabilities or CT intensities); "
                "give a labelmap with whole label values (argmax or threshold it first)"
            )
        array = array.astype(np.int32)
    low = int(array.min()) if array.size else 0
    if low < 0:
        raise ValueError(f"the {what} holds the negative value {low}; labels must be 0 (background) or positive")
    return array


def same_voxels_in_reference_order(pred: Image, ref: Image) -> Image:
    """``pred`` re-indexed into ``ref``'s axis order when that puts it exactly on ``ref``'s grid.

    A DICOM series and a NIfTI of the same scan often store the same voxels in different axis orders
    (RAS vs LPS, feet first); re-indexing is lossless, so such a pair is evaluated as it is.
    """
    from lesionseg.orientation import orientation_code, reorient

    if pred.same_grid(ref):
        return pred
    moved = reorient(pred, orientation_code(ref.direction))
    return moved if moved.same_grid(ref) else pred


def evaluate_case(
    pred: Image,
    ref: Image,
    *,
    label_names: Mapping[int, str] | None = None,
    lesion_labels: Iterable[int] | None = None,
    min_lesion_mm3: float = 0.0,
    connectivity: int = DEFAULT_CONNECTIVITY,
    min_reference_mm: float = 0.0,
    min_prediction_mm3: float = 0.0,
) -> dict[str, Any]:
    """Metrics of ``pred`` against ``ref`` (same grid): ``labels``, ``foreground``, ``lesions`` and ``detection``.

    ``lesions`` drops components under ``min_lesion_mm3`` from both masks before matching; ``detection``
    (:mod:`lesionseg.metrics.detection`) keeps every reference lesion, counts those of ``min_reference_mm`` or
    more, takes any overlap as a hit, and counts false positives of ``min_prediction_mm3`` or more.

    Labels evaluated: every non-zero value in either image plus every value named in ``label_names``.
    Lesions are the components of the voxels whose value is in ``lesion_labels`` (default: all foreground).
    """
    pred_arr, ref_arr = _labelmaps_on_one_grid(pred, ref)
    names = {int(k): str(v) for k, v in (label_names or {}).items()}
    per_label = label_metrics(pred_arr, ref_arr, ref.spacing, extra_values=names)
    labels_out: dict[str, Any] = {}
    for value, metrics in per_label.items():
        labels_out[str(value)] = {"name": names.get(value, f"Label_{value}"), **metrics}
    foreground = mask_metrics(pred_arr > 0, ref_arr > 0, ref.spacing)
    lesion_values, pred_lesions, ref_lesions = _lesion_masks(pred_arr, ref_arr, lesion_labels)
    lesions = lesion_metrics(pred_lesions, ref_lesions, ref.spacing, connectivity, min_lesion_mm3)
    lesions = {
        "lesion_labels": lesion_values if lesion_values is not None else "all foreground",
        "connectivity": connectivity,
        "min_lesion_mm3": float(min_lesion_mm3),
        "dice": dice_coefficient(pred_lesions, ref_lesions),
        **lesions,
    }
    limits = {"min_reference_mm": min_reference_mm, "min_prediction_mm3": min_prediction_mm3}
    detection = lesion_detection(pred_lesions, ref_lesions, ref.spacing, connectivity=connectivity, **limits)
    return {
        "grid": {"size_ijk": list(ref.size), "spacing_mm": [float(s) for s in ref.spacing]},
        "labels": labels_out,
        "foreground": foreground,
        "lesions": lesions,
        "detection": detection,
    }


def case_detection(
    pred: Image,
    ref: Image,
    *,
    lesion_labels: Iterable[int] | None = None,
    min_reference_mm: float = 0.0,
    min_prediction_mm3: float = 0.0,
    connectivity: int = DEFAULT_CONNECTIVITY,
) -> dict[str, Any]:
    """Only the detection by size of ``evaluate_case``: what each FROC point needs, without the distances."""
    _, pred_lesions, ref_lesions = _lesion_masks(*_labelmaps_on_one_grid(pred, ref), lesion_labels)
    limits = {"min_reference_mm": min_reference_mm, "min_prediction_mm3": min_prediction_mm3}
    return lesion_detection(pred_lesions, ref_lesions, ref.spacing, connectivity=connectivity, **limits)


def _labelmaps_on_one_grid(pred: Image, ref: Image) -> tuple[np.ndarray, np.ndarray]:
    """Both voxel arrays as labelmaps, ``pred`` re-indexed onto ``ref``'s grid, or the error that says why not."""
    pred = same_voxels_in_reference_order(pred, ref)
    require_same_grid(pred, ref, what="prediction")
    return as_labelmap(pred, "prediction"), as_labelmap(ref, "reference")


def _lesion_masks(
    pred: np.ndarray, ref: np.ndarray, lesion_labels: Iterable[int] | None
) -> tuple[list[int] | None, np.ndarray, np.ndarray]:
    """The lesion values (None: all foreground) and the lesion voxels of each labelmap."""
    if lesion_labels is None:
        return None, pred > 0, ref > 0
    values = sorted({int(v) for v in lesion_labels})
    return values, np.isin(pred, values), np.isin(ref, values)
