"""Label map -> RTSTRUCT file: the steps behind ``lesionseg rtstruct``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from scipy import ndimage

from lesionseg.dicom.write import save_dicom_file
from lesionseg.image import Image
from lesionseg.labels import LabelInfo
from lesionseg.rtstruct.build import INTERPRETED_TYPES, MAX_CONTOUR_BYTES, Contour, Roi, build_rtstruct, format_ds
from lesionseg.rtstruct.contours import mask_polygons, pieces, split_rows
from lesionseg.rtstruct.reference import ReferenceSeries
from lesionseg.rtstruct.segments import export_input

log = logging.getLogger(__name__)


def smooth_mask(mask: np.ndarray, spacing_kji: np.ndarray, sigma_mm: float) -> np.ndarray:
    """Gaussian-blur a binary mask by ``sigma_mm`` (in mm on every axis) and keep what stays above 0.5."""
    if sigma_mm <= 0:
        return mask
    sigma = sigma_mm / np.asarray(spacing_kji, dtype=float)
    return ndimage.gaussian_filter(mask.astype(np.float32), sigma=sigma, mode="constant") > 0.5


def _piece_contours(piece: np.ndarray, reference: ReferenceSeries, index: int) -> list[Contour]:
    out = []
    for polygon in mask_polygons(piece):
        if len(polygon) < 3:
            continue  # cannot happen for voxel-edge outlines (a voxel is 4 points); kept as a guard
        points = reference.pixel_to_world(index, polygon)
        text = format_ds(points)
        if len(text) <= MAX_CONTOUR_BYTES:
            out.append(Contour(index, points, text))
        else:
            # Too long for one ContourData: cut the piece into row bands whose outlines fit.
            for half in split_rows(piece):
                out.extend(_piece_contours(half, reference, index))
    return out


def slice_contours(mask2d: np.ndarray, reference: ReferenceSeries, index: int) -> list[Contour]:
    """The contours of one reference slice's mask, each within the ContourData size limit."""
    contours = []
    for polygon in mask_polygons(mask2d):
        points = reference.pixel_to_world(index, polygon)
        text = format_ds(points)
        if len(text) <= MAX_CONTOUR_BYTES:
            contours.append(Contour(index, points, text))
            continue
        # Rare (a body outline on a fine grid): redo this slice piece by piece, splitting the long ones.
        return [c for piece in pieces(mask2d) for c in _piece_contours(piece, reference, index)]
    return contours


def label_contours(mask: np.ndarray, reference: ReferenceSeries) -> list[Contour]:
    """Contours of a [slice, row, column] mask, slice by slice in the reference's sorted order."""
    out = []
    for index in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
        out.extend(slice_contours(mask[index], reference, int(index)))
    return out


def _interpreted_types(spec: str | Mapping[int, str], values: list[int]) -> dict[int, str]:
    if isinstance(spec, Mapping):
        types = {v: str(spec.get(v, "ORGAN")).upper() for v in values}
    else:
        types = {v: str(spec).upper() for v in values}
    for value, kind in types.items():
        if kind not in INTERPRETED_TYPES:
            raise ValueError(
                f"label {value}: RTROIInterpretedType {kind!r} is unknown; use one of {', '.join(INTERPRETED_TYPES)}"
            )
    return types


def export_rtstruct(
    reference_dir: str | Path,
    seg: str | Path | Image,
    output: str | Path,
    *,
    names: Mapping[int, str] | None = None,
    labels: list[LabelInfo] | None = None,
    smooth_mm: float = 0.0,
    interpreted_type: str | Mapping[int, str] = "ORGAN",
    algorithm: str = "AUTOMATIC",
    say: Callable[[str], None] = print,
) -> Path:
    """Write an RTSTRUCT for the label map ``seg`` on the series in ``reference_dir``; returns ``output``.

    ``names`` (value -> name) picks and names the labels to export; otherwise every label in the
    map is exported under the name its metadata (``labels``, a ``.seg.nrrd`` header or a
    ``labels.json``) gives, else ``Label_<n>``.
    """
    if smooth_mm < 0:
        raise ValueError(f"--smooth must be 0 or more mm, got {smooth_mm}")
    algorithm = algorithm.upper()
    job = export_input(reference_dir, seg, names, labels, say)
    reference, voxels, chosen = job.reference, job.voxels, job.labels
    types = _interpreted_types(interpreted_type, [info.value for info in chosen])
    gaps = reference.slice_gaps()
    spacing_kji = np.array([float(np.mean(gaps)) if gaps.size else 1.0, *reference.spacing_ij[::-1]])

    rois = []
    for info in chosen:
        mask = smooth_mask(voxels == info.value, spacing_kji, smooth_mm)
        contours = label_contours(mask, reference)
        if not contours:
            log.warning(
                "label %d (%s) vanished when smoothed by %g mm; no ROI written for it", info.value, info.name, smooth_mm
            )
            continue
        rois.append(Roi(info, types[info.value], algorithm, contours))
    notes: list[str] = []
    dataset = build_rtstruct(reference, rois, notes=notes)
    for note in notes:
        say(f"note: {note}")
    output = Path(output)
    return save_dicom_file(dataset, output)
