"""Compare an AI segmentation with a reference segmentation, segment by segment (Qt-free).

Both segmentations are rasterised by the MRML bridge onto one grid (the CT they were drawn on), then
scored by the engine's :func:`lesionseg.metrics.mask_metrics`. Each mapped pair is rasterised on its own,
so overlapping segments inside one segmentation do not steal voxels from each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lesionseg.mrml
from lesionseg.image import Image
from lesionseg.metrics import mask_metrics, metric_info
from LesionSegLib.tables import Column, fill_table_node, write_csv

TABLE_KIND = "comparison"

# The engine's metrics the table shows (all but HD, the plain maximum), titled as the engine describes them.
COMPARED_METRICS = ("dice", "iou", "hd95_mm", "assd_mm", "volume_pred_ml", "volume_ref_ml", "volume_diff_ml")
COLUMNS = (
    Column("segment", "Segment", kind="string"),
    Column("reference_segment", "Reference segment", kind="string"),
    *(Column(info.key, info.title, info.unit) for info in map(metric_info, COMPARED_METRICS)),
    Column("empty", "Empty", kind="string"),
)


def segment_names(segmentation_node: Any) -> list[str]:
    """Segment names in segment order."""
    return [info.name for _, info in lesionseg.mrml.segment_labels(segmentation_node)]


def _key(name: str) -> str:
    return " ".join(name.split()).casefold()


def default_segment_mapping(names: Sequence[str], reference_names: Sequence[str]) -> dict[str, str]:
    """Pair each segment with the reference segment of the same name (case and spacing ignored)."""
    by_key: dict[str, str] = {}
    for name in reference_names:
        by_key.setdefault(_key(name), name)
    return {name: by_key[_key(name)] for name in names if _key(name) in by_key}


def geometry_volume(*segmentation_nodes: Any) -> Any | None:
    """The volume node the first of these segmentations names as its reference geometry, if any."""
    for node in segmentation_nodes:
        if node is None:
            continue
        role = node.GetReferenceImageGeometryReferenceRole()
        volume = node.GetNodeReference(role)
        if volume is not None and volume.IsA("vtkMRMLScalarVolumeNode"):
            return volume
    return None


def check_mapping(mapping: Mapping[str, str], names: Sequence[str], reference_names: Sequence[str]) -> None:
    """Raise ValueError naming the problem when the mapping cannot be scored."""
    if not mapping:
        raise ValueError(
            "no segment is paired with a reference segment: give segments equal names, or pick the pairs in the table"
        )
    for name, reference in mapping.items():
        if name not in names:
            raise ValueError(f"segment {name!r} is not in the AI segmentation; it has {list(names)}")
        if reference not in reference_names:
            raise ValueError(
                f"segment {reference!r} is not in the reference segmentation; it has {list(reference_names)}"
            )
    used = list(mapping.values())
    twice = sorted({r for r in used if used.count(r) > 1})
    if twice:
        raise ValueError(f"reference segment(s) {twice} are paired more than once; pair each with one segment")


def compare_segmentations(
    segmentation_node: Any,
    reference_node: Any,
    mapping: Mapping[str, str] | None = None,
    geometry: Any | Image | None = None,
) -> list[dict[str, Any]]:
    """One row of metrics per mapped pair (segment → reference segment), in mapping order.

    ``geometry`` is the grid both are rasterised on: a volume node or an engine image. By default it is
    the CT that one of the segmentations names as its reference geometry.
    """
    if segmentation_node is None or reference_node is None:
        raise ValueError("choose both the AI segmentation and the reference segmentation")
    if segmentation_node is reference_node:
        raise ValueError("the reference must be a different segmentation from the one being checked")
    names, reference_names = segment_names(segmentation_node), segment_names(reference_node)
    if mapping is None:
        mapping = default_segment_mapping(names, reference_names)
    check_mapping(mapping, names, reference_names)
    if geometry is None:
        geometry = geometry_volume(segmentation_node, reference_node)
        if geometry is None:
            raise ValueError("neither segmentation names its CT volume; choose the input volume to compare on")
    rows = []
    for name, reference in mapping.items():
        predicted, _ = lesionseg.mrml.labelmap_from_segmentation_node(segmentation_node, geometry, {name: 1})
        truth, _ = lesionseg.mrml.labelmap_from_segmentation_node(reference_node, geometry, {reference: 1})
        metrics = mask_metrics(predicted.array > 0, truth.array > 0, truth.spacing)
        rows.append({"segment": name, "reference_segment": reference, **metrics})
    return rows


def comparison_table(scene: Any, rows: Sequence[dict[str, Any]], name: str, node: Any | None = None) -> Any:
    """The rows in a (new or given) locked table node."""
    return fill_table_node(scene, name, COLUMNS, rows, TABLE_KIND, node)


def write_comparison_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    return write_csv(path, COLUMNS, rows)
