"""Label maps for export: their names and colours, and their voxels on the reference series' slices."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lesionseg.image import POSITION_TOLERANCE_MM, Image
from lesionseg.labels import LabelInfo
from lesionseg.orientation import orientation_code, reorient
from lesionseg.rtstruct.reference import ReferenceSeries, read_reference_series

log = logging.getLogger(__name__)


def add_export_arguments(parser: argparse.ArgumentParser, output_help: str) -> None:
    """The arguments of every export command: the reference series, the label map, the output and the names."""
    parser.add_argument("--reference", required=True, help="folder holding the DICOM image series")
    parser.add_argument("--seg", required=True, help="label map (NIfTI, NRRD, .seg.nrrd, MetaImage)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    parser.add_argument("--output", required=True, help=output_help)
    parser.add_argument(
        "--names",
        help="VALUE=NAME pairs, e.g. 1=Spleen,2=Liver: exports only these labels. Without it every label is "
        "exported, named from a .seg.nrrd header or labels.json beside the map, else Label_<n>",
    )


def parse_names(text: str | None) -> dict[int, str]:
    """``"1=Spleen,2=Liver"`` -> ``{1: "Spleen", 2: "Liver"}``."""
    if not text:
        return {}
    names: dict[int, str] = {}
    for item in text.split(","):
        value, sep, name = item.partition("=")
        if not sep or not value.strip().isdigit() or not name.strip():
            raise ValueError(f"--names: cannot read {item!r}; write VALUE=NAME pairs, e.g. 1=Spleen,2=Liver")
        if int(value) == 0:
            raise ValueError("--names: value 0 is background and cannot be named")
        names[int(value)] = name.strip()
    return names


def _labels_from_json(path: Path) -> list[LabelInfo]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, Mapping) and "labels" in data:
        data = data["labels"]
    try:
        if isinstance(data, Mapping):  # {"1": "Spleen"} or {"1": {"name": ..., "color": ...}}
            return [
                LabelInfo.from_dict({"value": int(k), **(v if isinstance(v, Mapping) else {"name": v})})
                for k, v in data.items()
                if int(k) != 0
            ]
        return [LabelInfo.from_dict(item) for item in data if int(item["value"]) != 0]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"{path}: cannot read label names ({error}); expect a list of {{'value', 'name', 'color'}} "
            'or a mapping like {"1": "Spleen"}'
        ) from error


def read_labelmap(path: str | Path) -> tuple[Image, list[LabelInfo]]:
    """A label map and the labels its own metadata names.

    Names come from a ``.seg.nrrd`` header (``Segment<n>_Name`` / ``_LabelValue`` / ``_Color``),
    else from ``<name>.labels.json`` or ``labels.json`` in the same folder; none is fine.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such label map: {path}")
    known: list[LabelInfo] = []
    if path.name.lower().endswith(".seg.nrrd"):
        from lesionseg.io.segnrrd import read_seg_nrrd

        image, known = read_seg_nrrd(path)
    else:
        from lesionseg.io import read_image

        image = read_image(path)
    if not known:
        stem = path.name.split(".")[0]
        for candidate in (path.with_name(f"{stem}.labels.json"), path.with_name("labels.json")):
            if candidate.is_file():
                known = _labels_from_json(candidate)
                break
    return integer_labels(image, path.name), known


def integer_labels(image: Image, what: str = "the label map") -> Image:
    """``image`` with integer voxels; refuses fractional or negative values."""
    if np.issubdtype(image.array.dtype, np.floating):
        if not np.array_equal(image.array, np.round(image.array)):
            raise ValueError(f"{what} holds fractional values; a label map holds integer labels")
        image = image.with_array(image.array.astype(np.int32))
    if image.array.size and image.array.min() < 0:
        raise ValueError(f"{what} holds negative values; a label map holds labels 0 (background), 1, 2, ...")
    return image


def resolve_labels(
    present: set[int], names: Mapping[int, str] | None, known: list[LabelInfo] | None
) -> tuple[list[LabelInfo], list[int]]:
    """The labels to export and the named ones that are absent from the mask.

    A name from ``names`` wins over the map's own metadata, which wins over ``Label_<n>``.
    When ``names`` is given, only its labels are exported.
    """
    by_value = {info.value: info for info in known or []}
    if names:
        wanted = sorted(names)
        absent = [v for v in wanted if v not in present]
        out = []
        for v in wanted:
            if v in absent:
                continue
            base = by_value.get(v, LabelInfo.default(v))
            out.append(LabelInfo(v, names[v], base.color, base.terminology))
        return out, absent
    return [by_value.get(v, LabelInfo.default(v)) for v in sorted(present) if v != 0], []


def labelled_fraction_inside(label: Image, reference: ReferenceSeries) -> tuple[float, float, float]:
    """(fraction, inside mm³, labelled mm³): how much of the labelled volume lies inside the reference's voxels.

    A labelled voxel counts as inside when its centre falls within the slab the reference slices span
    (half a gap beyond the first and last slice) and within their rows and columns.  Counted plane by plane,
    so no full-volume coordinate array is made.
    """
    origin = reference.slices[0].position
    heights = np.array([float((s.position - origin) @ reference.normal) for s in reference.slices])
    gaps = np.diff(heights)
    half_first = gaps[0] / 2 if gaps.size else float(getattr(reference.first, "SliceThickness", None) or 1.0) / 2
    half_last = gaps[-1] / 2 if gaps.size else half_first
    low_h, high_h = heights[0] - half_first, heights[-1] + half_last
    axes = np.stack([reference.row_direction, reference.column_direction, reference.normal])  # rows: i, j, h (mm)
    half_i = reference.spacing_ij[0] / 2
    half_j = reference.spacing_ij[1] / 2
    limit_i = (reference.columns - 0.5) * reference.spacing_ij[0]
    limit_j = (reference.rows - 0.5) * reference.spacing_ij[1]
    scaled = np.asarray(label.direction, dtype=float) * np.asarray(label.spacing, dtype=float)  # ijk -> LPS
    start = np.asarray(label.origin, dtype=float) - origin
    tol = POSITION_TOLERANCE_MM  # centres this close outside the outer voxel faces still count (DS rounding)
    total = inside = 0
    for k, plane in enumerate(label.array):
        j, i = np.nonzero(plane)
        if i.size == 0:
            continue
        ijk = np.stack([i, j, np.full(i.size, k)]).astype(np.float64)
        mm = axes @ (scaled @ ijk + start[:, None])  # (i mm, j mm, height) in the reference's frame
        ok = (
            (mm[0] >= -half_i - tol)
            & (mm[0] <= limit_i + tol)
            & (mm[1] >= -half_j - tol)
            & (mm[1] <= limit_j + tol)
            & (mm[2] >= low_h - tol)
            & (mm[2] <= high_h + tol)
        )
        total += i.size
        inside += int(np.count_nonzero(ok))
    voxel_mm3 = float(np.prod(label.spacing))
    fraction = inside / total if total else 1.0
    return fraction, inside * voxel_mm3, total * voxel_mm3


def check_labels_inside(label: Image, reference: ReferenceSeries) -> None:
    """Refuse a label map whose labelled volume does not lie wholly inside the reference series.

    Resampling would silently drop the part outside, and the RTSTRUCT would look complete.
    """
    fraction, inside, total = labelled_fraction_inside(label, reference)
    if inside < total:
        shown = f"{100 * fraction:.1f}" if fraction < 0.999 else f"{100 * fraction:.3f}"
        raise ValueError(
            f"only {shown}% of the label map's labelled volume ({inside:.6g} of {total:.6g} mm³) lies inside the "
            "reference series; the rest would be lost from the export. The label map was made on another image or "
            "region: export it against the series it was segmented on"
        )


def labels_on_reference(label: Image, reference: ReferenceSeries, say=print) -> np.ndarray:
    """The label map's voxels on the reference slices, as ``[slice, row, column]`` in sorted slice order.

    A map on the same voxel centres in another axis order is re-indexed (lossless); any other
    grid is resampled with nearest neighbour, and ``say`` reports it, provided the whole labelled
    volume lies inside the reference (otherwise ValueError names the fraction that does).
    """
    from lesionseg.resample import resample_to  # SimpleITK loads when an export runs, not when its command registers

    if reference.is_regular():
        grid = reference.grid()
        if label.same_grid(grid):
            return label.array
        reindexed = reorient(label, orientation_code(grid.direction))
        if reindexed.same_grid(grid):
            return reindexed.array
        check_labels_inside(label, reference)
        say(
            f"note: the label map's grid ({label.size} voxels, spacing {np.round(label.spacing, 3).tolist()} mm) "
            f"is not the reference series' grid ({grid.size}, {np.round(grid.spacing, 3).tolist()} mm); "
            "resampled to it with nearest neighbour"
        )
        return resample_to(label, grid, "nearest").array
    check_labels_inside(label, reference)
    say("note: the reference slices are unevenly spaced; the label map is sampled slice by slice (nearest neighbour)")
    return np.concatenate(
        [resample_to(label, reference.slice_grid(n), "nearest").array for n in range(len(reference.slices))]
    )


def present_labels(voxels: np.ndarray) -> set[int]:
    """The non-zero labels in an integer array.

    Counted slice by slice with a histogram: far quicker than ``np.unique`` on a big volume, and
    without a full-size integer copy.
    """
    if voxels.size == 0:
        return set()
    low, high = int(voxels.min()), int(voxels.max())
    if low < 0:
        raise ValueError(f"the label map holds negative values (down to {low}); labels are 0 (background), 1, 2, ...")
    if high >= 2**20:
        return {int(v) for v in np.unique(voxels)} - {0}
    counts = np.zeros(high + 1, dtype=np.int64)
    for plane in voxels:
        counts += np.bincount(plane.reshape(-1), minlength=high + 1)
    return {int(v) for v in np.flatnonzero(counts)} - {0}


@dataclass
class ExportInput:
    reference: ReferenceSeries
    voxels: np.ndarray  # [slice, row, column] on the reference slices, sorted along the normal
    labels: list[LabelInfo]  # what to export, in order


def export_input(
    reference_dir: str | Path,
    seg: str | Path | Image,
    names: Mapping[int, str] | None,
    labels: list[LabelInfo] | None,
    say: Callable[[str], None],
) -> ExportInput:
    """Read the reference series and the label map, bring the map onto its slices, pick the labels.

    Named labels absent from the map are skipped with a warning; nothing left to export is an error.
    """
    reference = read_reference_series(reference_dir)
    if isinstance(seg, Image):
        label_image, known = integer_labels(seg), list(labels or [])
    else:
        label_image, known = read_labelmap(seg)
        known = list(labels or []) or known
    voxels = labels_on_reference(label_image, reference, say=say)
    # With names given only those labels are looked for: cheaper than a histogram of the volume.
    present = {v for v in names if (voxels == v).any()} if names else present_labels(voxels)
    chosen, absent = resolve_labels(present, names, known)
    for value in absent:
        log.warning("label %d (%s) is not in the label map; nothing is exported for it", value, names[value])
    if not chosen:
        raise ValueError("nothing to export: the label map holds no labelled voxels on the reference slices")
    return ExportInput(reference, voxels, chosen)
