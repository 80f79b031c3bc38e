"""Overlap, surface-distance and volume metrics of one binary mask against another.

Masks are boolean arrays indexed ``[k, j, i]`` like :class:`lesionseg.image.Image`; ``spacing`` is in
``(i, j, k)`` order, as on the image.  The semantics (surface, percentile, empty masks) are written
down in :mod:`lesionseg.metrics`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import KDTree

from lesionseg.metrics.descriptors import MASK_METRIC_KEYS

# 6-neighbourhood: a voxel is on the surface when a face neighbour lies outside the mask.
_FACE_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)

EMPTY_BOTH = "both"
EMPTY_PREDICTION = "prediction"
EMPTY_REFERENCE = "reference"

METRIC_KEYS = MASK_METRIC_KEYS  # what mask_metrics returns, described in lesionseg.metrics.descriptors


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box holding every True voxel of ``mask``, or None when there is none."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        if not len(hits):
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _union_box(pred: np.ndarray, ref: np.ndarray) -> tuple[slice, ...] | None:
    return bounding_box(pred | ref)


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one face neighbour outside it; the array edge counts as outside."""
    mask = np.asarray(mask, dtype=bool)
    return mask & ~ndimage.binary_erosion(mask, structure=_FACE_NEIGHBOURS, border_value=0)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each surface voxel centre of ``pred`` to the nearest of ``ref``, and back.

    Both masks must be non-empty.  Direction does not enter: the grid's axes are orthonormal, so
    distances in index space scaled by the spacing are the physical distances.
    """
    box = _union_box(pred, ref)
    if box is None or not pred.any() or not ref.any():
        raise ValueError("surface distances need two non-empty masks")
    # Crop to the union and pad by one empty voxel: the surface and the distances are unchanged, and
    # big images with small structures cost only the structure's box.
    pred_c = np.pad(pred[box], 1)
    ref_c = np.pad(ref[box], 1)
    scale = np.asarray(spacing, dtype=np.float64)[::-1]  # array axes are (k, j, i)
    pred_pts = np.argwhere(surface_voxels(pred_c)) * scale
    ref_pts = np.argwhere(surface_voxels(ref_c)) * scale
    pred_to_ref = KDTree(ref_pts).query(pred_pts, k=1)[0]
    ref_to_pred = KDTree(pred_pts).query(ref_pts, k=1)[0]
    return pred_to_ref, ref_to_pred


def mask_metrics(pred: np.ndarray, ref: np.ndarray, spacing: np.ndarray) -> dict[str, Any]:
    """Dice, IoU, HD95, HD (max), ASSD and volumes of two boolean masks on one grid.

    Distances are ``None`` when exactly one mask is empty; see :mod:`lesionseg.metrics` for why.
    """
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"masks differ in shape: {pred.shape} vs {ref.shape}")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    n_pred = int(np.count_nonzero(pred))
    n_ref = int(np.count_nonzero(ref))
    out: dict[str, Any] = {}
    if n_pred == 0 and n_ref == 0:
        out.update(dice=1.0, iou=1.0, hd95_mm=0.0, hd_mm=0.0, assd_mm=0.0, empty=EMPTY_BOTH)
    elif n_pred == 0 or n_ref == 0:
        out.update(
            dice=0.0,
            iou=0.0,
            hd95_mm=None,
            hd_mm=None,
            assd_mm=None,
            empty=EMPTY_PREDICTION if n_pred == 0 else EMPTY_REFERENCE,
        )
    else:
        both = int(np.count_nonzero(pred & ref))
        d_pr, d_rp = surface_distances(pred, ref, spacing)
        out.update(
            dice=2.0 * both / (n_pred + n_ref),
            iou=both / (n_pred + n_ref - both),
            # np.percentile's default linear interpolation, as MONAI's torch.quantile uses.
            hd95_mm=float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))),
            hd_mm=float(max(d_pr.max(), d_rp.max())),
            assd_mm=float(np.concatenate([d_pr, d_rp]).mean()),
            empty=None,
        )
    out.update(
        volume_pred_ml=n_pred * voxel_ml,
        volume_ref_ml=n_ref * voxel_ml,
        volume_diff_ml=(n_pred - n_ref) * voxel_ml,
        voxels_pred=n_pred,
        voxels_ref=n_ref,
    )
    return out


def dice_coefficient(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty (see :mod:`lesionseg.metrics`)."""
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(ref))
    return 2.0 * int(np.count_nonzero(pred & ref)) / total if total else 1.0


def label_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing: np.ndarray, extra_values: Iterable[int] = ()
) -> dict[int, dict[str, Any]]:
    """:func:`mask_metrics` for each non-zero value in either labelmap, and for each of ``extra_values``."""
    # One pass per image finds each label's box, so a small organ in a big image costs only its box.
    pred_boxes = _boxes(pred)
    ref_boxes = _boxes(ref)
    values = set(pred_boxes) | set(ref_boxes) | {int(v) for v in extra_values}
    out: dict[int, dict[str, Any]] = {}
    for value in sorted(int(v) for v in values):
        box = _merge_boxes(pred_boxes.get(value), ref_boxes.get(value))
        if box is None:
            empty = np.zeros((1, 1, 1), dtype=bool)
            out[value] = mask_metrics(empty, empty, spacing)
        else:
            out[value] = mask_metrics(pred[box] == value, ref[box] == value, spacing)
    return out


def _boxes(array: np.ndarray) -> dict[int, tuple[slice, ...]]:
    # find_objects takes any integer type in place, so a big labelmap is never copied.
    found = ndimage.find_objects(array)
    return {value + 1: box for value, box in enumerate(found) if box is not None}


def _merge_boxes(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    if a is None:
        return b
    if b is None:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True))
