"""Lesion-wise metrics (connected components matched by overlap) and the per-lesion table.

See :mod:`lesionseg.metrics` for the matching rules: connectivity, the minimum-volume filter, what counts
as detected, and the empty cases.

The lesion table measures each lesion as a reader would:

* **Axial slices** are the planes of constant index along the image axis nearest the patient's z
  (superior) axis, found from the direction matrix, so a grid stored with j or i along z is handled.  On an
  oblique grid those planes are tilted from the true axial plane by the angle :func:`axial_axis` returns
  (at most 54.7°); the diameter is measured within the stored slices, as one scrolling them would, without
  resampling.
* **Longest axial diameter** is the longest distance between voxel centres of the lesion lying in one such
  slice, in mm; a lesion one voxel wide has diameter 0, and a sphere of diameter D measures about D.
* **Centroid** is the mean voxel centre in Slicer's RAS mm (the engine's LPS with x and y negated).
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from lesionseg.image import Image, require_same_grid
from lesionseg.metrics.masks import EMPTY_BOTH, EMPTY_PREDICTION, EMPTY_REFERENCE, bounding_box

DEFAULT_CONNECTIVITY = 26
_RANK_OF_CONNECTIVITY = {6: 1, 18: 2, 26: 3}


def neighbourhood(connectivity: int) -> np.ndarray:
    """The 3D structuring element for 6-, 18- or 26-connectivity."""
    if connectivity not in _RANK_OF_CONNECTIVITY:
        raise ValueError(f"connectivity must be 6, 18 or 26 (voxel neighbours in 3D), got {connectivity}")
    return ndimage.generate_binary_structure(3, _RANK_OF_CONNECTIVITY[connectivity])


def connected_components(
    mask: np.ndarray, spacing: np.ndarray, connectivity: int = DEFAULT_CONNECTIVITY, min_volume_mm3: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Label the components of ``mask`` (1..n) after dropping those under ``min_volume_mm3``.

    Returns the labelled array and the voxel count of each kept component (index 0 unused).
    """
    if min_volume_mm3 < 0:
        raise ValueError(f"the minimum lesion volume must be 0 or more mm³, got {min_volume_mm3}")
    labelled, count = ndimage.label(mask, structure=neighbourhood(connectivity))
    sizes = np.bincount(labelled.reshape(-1), minlength=count + 1)
    if min_volume_mm3 > 0 and count:
        voxel_mm3 = float(np.prod(spacing))
        keep = sizes * voxel_mm3 >= min_volume_mm3
        keep[0] = False
        renumber = np.zeros(count + 1, dtype=labelled.dtype)
        renumber[keep] = np.arange(1, int(keep.sum()) + 1, dtype=labelled.dtype)
        labelled = renumber[labelled]
        sizes = np.concatenate([[0], sizes[keep]])
    return labelled, sizes


def lesion_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: np.ndarray,
    connectivity: int = DEFAULT_CONNECTIVITY,
    min_volume_mm3: float = 0.0,
) -> dict[str, Any]:
    """TP/FP/FN lesion counts, sensitivity, precision, and autoPET's FP and FN volumes of two boolean masks."""
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    neighbourhood(connectivity)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    box = bounding_box(pred | ref)
    if box is not None:
        pred_cc, pred_sizes = connected_components(pred[box], spacing, connectivity, min_volume_mm3)
        ref_cc, ref_sizes = connected_components(ref[box], spacing, connectivity, min_volume_mm3)
        touching = (pred_cc > 0) & (ref_cc > 0)
        hit_pred = set(np.flatnonzero(np.bincount(pred_cc[touching], minlength=len(pred_sizes))).tolist())
        hit_ref = set(np.flatnonzero(np.bincount(ref_cc[touching], minlength=len(ref_sizes))).tolist())
    else:
        pred_sizes = ref_sizes = np.zeros(1, dtype=np.int64)
        hit_pred = hit_ref = set()
    n_pred, n_ref = len(pred_sizes) - 1, len(ref_sizes) - 1
    missed = [i for i in range(1, n_ref + 1) if i not in hit_ref]
    spurious = [i for i in range(1, n_pred + 1) if i not in hit_pred]
    tp = n_ref - len(missed)
    if n_pred == 0 and n_ref == 0:
        empty = EMPTY_BOTH
    elif n_pred == 0:
        empty = EMPTY_PREDICTION
    elif n_ref == 0:
        empty = EMPTY_REFERENCE
    else:
        empty = None
    return {
        "n_ref": n_ref,
        "n_pred": n_pred,
        "tp": tp,
        "fn": len(missed),
        "fp": len(spurious),
        "tp_pred": n_pred - len(spurious),
        "sensitivity": tp / n_ref if n_ref else None,
        "precision": (n_pred - len(spurious)) / n_pred if n_pred else None,
        "fp_volume_ml": float(pred_sizes[spurious].sum()) * voxel_ml if spurious else 0.0,
        "fn_volume_ml": float(ref_sizes[missed].sum()) * voxel_ml if missed else 0.0,
        "empty": empty,
    }


def axial_axis(direction: np.ndarray) -> tuple[int, float]:
    """The image axis (0=i, 1=j, 2=k) nearest the patient z axis, and its tilt from z in degrees."""
    z_components = np.abs(np.asarray(direction)[2, :])
    axis = int(np.argmax(z_components))
    return axis, float(np.degrees(np.arccos(min(1.0, z_components[axis]))))


def _longest_chord(uv: np.ndarray, scale: np.ndarray) -> float:
    """Longest distance between points of one slice (integer in-plane indices), in mm."""
    if len(uv) < 2:
        return 0.0
    # Every convex-hull vertex is the first or last point of its row, so those few points suffice.
    order = np.lexsort((uv[:, 0], uv[:, 1]))
    rows = uv[order]
    first = np.flatnonzero(np.r_[True, rows[1:, 1] != rows[:-1, 1]])
    last = np.r_[first[1:], len(rows)] - 1
    points = np.unique(np.concatenate([rows[first], rows[last]]), axis=0) * scale
    if len(points) < 2:
        return 0.0
    if len(points) > 64:
        # Collinear points make Qhull fail; their row extremes are few enough already.
        with contextlib.suppress(QhullError):
            points = points[ConvexHull(points).vertices]
    return float(pdist(points).max())


def longest_axial_diameter_mm(ijk: np.ndarray, image: Image) -> float:
    """Longest in-plane distance between voxel centres of a component within any one axial slice."""
    axis, _ = axial_axis(image.direction)
    in_plane = [a for a in range(3) if a != axis]
    scale = image.spacing[in_plane]
    by_slice = ijk[np.argsort(ijk[:, axis], kind="stable")]
    cuts = np.flatnonzero(np.diff(by_slice[:, axis])) + 1
    return max(_longest_chord(part[:, in_plane], scale) for part in np.split(by_slice, cuts))


def lesion_table(
    label_image: Image,
    ct_image: Image | None = None,
    min_volume_mm3: float = 0.0,
    *,
    connectivity: int = DEFAULT_CONNECTIVITY,
    labels: list[int] | None = None,
) -> list[dict[str, Any]]:
    """One row per connected lesion of each label value, largest first.

    Row keys: ``id`` (1.., in row order), ``label``, ``voxels``, ``volume_ml``,
    ``longest_axial_diameter_mm``, ``centroid_ras_mm`` ([R, A, S] as Slicer shows it), ``mean_hu`` and
    ``max_hu`` (``None`` without a CT).  Components of different label values are separate lesions.
    """
    if ct_image is not None:
        require_same_grid(label_image, ct_image, what="lesion labelmap")
    array = label_image.array
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"lesion_table needs an integer labelmap, got voxel type {array.dtype}")
    structure = neighbourhood(connectivity)
    found = ndimage.find_objects(array)
    wanted = None if labels is None else {int(v) for v in labels}
    voxel_mm3 = label_image.voxel_volume_mm3
    rows: list[dict[str, Any]] = []
    for index, box in enumerate(found):
        value = index + 1
        if box is None or (wanted is not None and value not in wanted):
            continue
        components, _ = ndimage.label(array[box] == value, structure=structure)
        offset = np.array([s.start for s in box])
        for number, sub_box in enumerate(ndimage.find_objects(components), start=1):
            kji = np.argwhere(components[sub_box] == number) + offset + [s.start for s in sub_box]
            if len(kji) * voxel_mm3 < min_volume_mm3:
                continue
            ijk = kji[:, ::-1]
            x, y, z = label_image.world(ijk.mean(axis=0))
            row: dict[str, Any] = {
                "label": value,
                "voxels": len(kji),
                "volume_ml": len(kji) * voxel_mm3 / 1000.0,
                "longest_axial_diameter_mm": longest_axial_diameter_mm(ijk, label_image),
                # Slicer shows RAS; the engine works in LPS, so x and y change sign.
                "centroid_ras_mm": [float(-x), float(-y), float(z)],
                "mean_hu": None,
                "max_hu": None,
            }
            if ct_image is not None:
                values = ct_image.array[tuple(kji.T)].astype(np.float64)
                row["mean_hu"] = float(values.mean())
                row["max_hu"] = float(values.max())
            rows.append(row)
    rows.sort(key=lambda r: (-r["voxels"], r["label"], r["centroid_ras_mm"]))
    return [{"id": n, **row} for n, row in enumerate(rows, start=1)]
