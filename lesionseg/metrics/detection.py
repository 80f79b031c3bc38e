"""Lesion detection by size, and FROC points: what a reader of metastasis papers asks first.

* **Reference lesions** are the connected components of the reference lesion voxels, all of them: a small
  reference lesion is never removed, so a prediction on it is never a false positive.
* **Size of a lesion** is its **longest extent**: the greatest distance between corners of its voxels (the
  Feret diameter of the voxelised lesion, in mm).  A lesion of nominal diameter D measures about D, at most
  one voxel diagonal more; an equivalent-sphere diameter would measure an elongated node well under its
  long axis, which is the size readers and the phantoms state.
* **Counted reference lesions** are those of at least ``min_reference_mm``; sensitivity is over them only.
* **Hit**: a reference lesion is found when any predicted component overlaps it by one voxel or more,
  whatever the component's size; a lesion partly found is found.
* **False positive**: a predicted component that overlaps no reference lesion (of any size) and whose volume
  is at least ``min_prediction_mm3``; smaller stray components are counted apart, not as false positives.
* **FROC point**: for one prediction set (e.g. one probability threshold), pooled sensitivity over all cases
  against false positives per case.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from itertools import product
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from lesionseg.metrics.lesions import DEFAULT_CONNECTIVITY, neighbourhood
from lesionseg.metrics.masks import dice_coefficient

_CORNERS = np.array(list(product((-0.5, 0.5), repeat=3)))


def longest_extent_mm(kji: np.ndarray, spacing_ijk: np.ndarray) -> float:
    """Greatest distance between corners of the voxels at ``kji`` (array indices), in mm."""
    points = np.asarray(kji, dtype=np.float64)[:, ::-1] * np.asarray(spacing_ijk, dtype=np.float64)
    if len(points) > 8:
        # The farthest corners belong to voxels on the hull of the centres; flat lesions make Qhull fail.
        with contextlib.suppress(QhullError, ValueError):
            points = points[ConvexHull(points).vertices]
    corners = (points[:, None, :] + _CORNERS[None] * np.asarray(spacing_ijk, dtype=np.float64)).reshape(-1, 3)
    return float(pdist(corners).max())


def equivalent_diameter_mm(volume_mm3: float) -> float:
    """Diameter of the sphere of the same volume."""
    return float((6.0 * volume_mm3 / np.pi) ** (1.0 / 3.0))


def lesion_detection(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing_ijk: Sequence[float],
    *,
    min_reference_mm: float = 0.0,
    min_prediction_mm3: float = 0.0,
    connectivity: int = DEFAULT_CONNECTIVITY,
) -> dict[str, Any]:
    """Detection by size of two boolean masks (arrays in k, j, i order; ``spacing_ijk`` in mm).

    Returns the counts (``n_ref`` counted reference lesions, ``tp``, ``fn``, ``fp``), ``sensitivity`` (None
    without a counted reference lesion), the lesions left out of each count, and one row per reference lesion.
    """
    if min_reference_mm < 0 or min_prediction_mm3 < 0:
        raise ValueError("the minimum reference size and the minimum prediction volume must be 0 or more")
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    spacing = np.asarray(spacing_ijk, dtype=np.float64)
    voxel_mm3 = float(np.prod(spacing))
    structure = neighbourhood(connectivity)
    ref_cc, n_ref_all = ndimage.label(ref, structure=structure)
    pred_cc, n_pred_all = ndimage.label(pred, structure=structure)
    touching = (ref_cc > 0) & (pred_cc > 0)
    ref_hit = np.bincount(ref_cc[touching], minlength=n_ref_all + 1) > 0
    pred_hit = np.bincount(pred_cc[touching], minlength=n_pred_all + 1) > 0
    rows: list[dict[str, Any]] = []
    for number, box in enumerate(ndimage.find_objects(ref_cc), start=1):
        kji = np.argwhere(ref_cc[box] == number) + [s.start for s in box]
        volume = len(kji) * voxel_mm3
        extent = longest_extent_mm(kji, spacing)
        rows.append(
            {
                "extent_mm": extent,
                "equivalent_diameter_mm": equivalent_diameter_mm(volume),
                "volume_mm3": volume,
                "centre_kji": [float(v) for v in kji.mean(axis=0)],
                "counted": bool(extent >= min_reference_mm),
                "hit": bool(ref_hit[number]),
            }
        )
    pred_sizes = np.bincount(pred_cc.reshape(-1), minlength=n_pred_all + 1) * voxel_mm3
    unmatched = [n for n in range(1, n_pred_all + 1) if not pred_hit[n]]
    fp = [n for n in unmatched if pred_sizes[n] >= min_prediction_mm3]
    counted = [row for row in rows if row["counted"]]
    tp = sum(row["hit"] for row in counted)
    return {
        "min_reference_mm": float(min_reference_mm),
        "min_prediction_mm3": float(min_prediction_mm3),
        "connectivity": connectivity,
        "n_ref": len(counted),
        "tp": tp,
        "fn": len(counted) - tp,
        "fp": len(fp),
        "sensitivity": tp / len(counted) if counted else None,
        "n_ref_below_size": len(rows) - len(counted),
        "n_pred": n_pred_all,
        "n_pred_small_unmatched": len(unmatched) - len(fp),
        "dice": dice_coefficient(pred, ref),
        "voxels_pred": int(pred.sum()),
        "voxels_ref": int(ref.sum()),
        "voxels_overlap": int((pred & ref).sum()),
        "reference_lesions": rows,
    }


def pool_detection(cases: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Pooled sensitivity (all counted lesions of all cases together) and false positives per case.

    ``dice_pooled`` is Dice over all cases' lesion voxels together; ``dice_mean`` averages the cases that hold
    reference lesion voxels, since a lesion-free case predicted empty scores 1 and would flatter the mean.
    """
    n_ref = sum(int(case["n_ref"]) for case in cases)
    tp = sum(int(case["tp"]) for case in cases)
    fp = sum(int(case["fp"]) for case in cases)
    dice = [case["dice"] for case in cases if case["voxels_ref"] > 0]
    overlap = sum(int(case["voxels_overlap"]) for case in cases)
    both = sum(int(case["voxels_pred"]) + int(case["voxels_ref"]) for case in cases)
    return {
        "n_cases": len(cases),
        "n_ref": n_ref,
        "tp": tp,
        "fn": n_ref - tp,
        "fp": fp,
        "sensitivity": tp / n_ref if n_ref else None,
        "fp_per_case": fp / len(cases) if cases else None,
        "fp_per_case_max": max((int(case["fp"]) for case in cases), default=None),
        "dice_pooled": 2.0 * overlap / both if both else None,
        "dice_mean": float(np.mean(dice)) if dice else None,
    }


def froc_points(
    sets: Mapping[float, Iterable[tuple[np.ndarray, np.ndarray, Sequence[float]]]],
    *,
    min_reference_mm: float = 0.0,
    min_prediction_mm3: float = 0.0,
    connectivity: int = DEFAULT_CONNECTIVITY,
) -> list[dict[str, Any]]:
    """One FROC point per threshold: ``{threshold: [(pred, ref, spacing), ...]}`` → pooled points, by threshold."""
    points = []
    for threshold in sorted(sets):
        cases = [
            lesion_detection(
                pred,
                ref,
                spacing,
                min_reference_mm=min_reference_mm,
                min_prediction_mm3=min_prediction_mm3,
                connectivity=connectivity,
            )
            for pred, ref, spacing in sets[threshold]
        ]
        points.append({"threshold": float(threshold), **pool_detection(cases)})
    return points
