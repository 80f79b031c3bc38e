"""Label maps for export: their names and colours, and their voxels on the reference series' slices."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lesionseg.image import Image
from lesionseg.labels import LabelInfo
from lesionseg.orientation import orientation_code, reorient
from lesionseg.rtstruct.reference import ReferenceSeries, read_reference_series

log = logging.getLogger(__name__)


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


def _labels_from_seg_nrrd(header: Mapping[str, str]) -> list[LabelInfo]:
    out = []
    n = 0
    while f"Segment{n}_Name" in header:
        value = int(header.get(f"Segment{n}_LabelValue", n + 1))
        color = LabelInfo.default(value).color
        if f"Segment{n}_Color" in header:
            parts = [float(c) for c in str(header[f"Segment{n}_Color"]).split()]
            if len(parts) == 3 and all(0 <= c <= 1 for c in parts):
                color = tuple(parts)
        out.append(LabelInfo(value, str(header[f"Segment{n}_Name"]), color))
        n += 1
    return out


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
        from lesionseg.io.nrrd import read_nrrd

        image, header = read_nrrd(path)
        known = _labels_from_seg_nrrd(header)
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


def _nearest_resample(label: Image, grid: Image) -> np.ndarray:
    import SimpleITK as sitk

    from lesionseg.io.sitk import to_sitk

    moving = to_sitk(label)
    out = sitk.Resample(moving, to_sitk(grid), sitk.Transform(), sitk.sitkNearestNeighbor, 0, moving.GetPixelID())
    return sitk.GetArrayFromImage(out)


def labels_on_reference(label: Image, reference: ReferenceSeries, say=print) -> np.ndarray:
    """The label map's voxels on the reference slices, as ``[slice, row, column]`` in sorted slice order.

    A map on the same voxel centres in another axis order is re-indexed (lossless); any other
    grid is resampled with nearest neighbour, and ``say`` reports it.
    """
    if reference.is_regular():
        grid = reference.grid()
        if label.same_grid(grid):
            return label.array
        reindexed = reorient(label, orientation_code(grid.direction))
        if reindexed.same_grid(grid):
            return reindexed.array
        say(
            f"note: the label map's grid ({label.size} voxels, spacing {np.round(label.spacing, 3).tolist()} mm) "
            f"is not the reference series' grid ({grid.size}, {np.round(grid.spacing, 3).tolist()} mm); "
            "resampled to it with nearest neighbour"
        )
        return _nearest_resample(label, grid)
    say("note: the reference slices are unevenly spaced; the label map is sampled slice by slice (nearest neighbour)")
    return np.concatenate([_nearest_resample(label, reference.slice_grid(n)) for n in range(len(reference.slices))])


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
