"""The lesion table of a segmentation: one row per connected lesion, and jumping the views to one (Qt-free)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lesionseg.mrml
from lesionseg.metrics import lesion_table
from LesionSegLib.tables import Column, fill_table_node, table_rows, write_csv

TABLE_KIND = "lesions"

COLUMNS = (
    Column("id", "Lesion", kind="int"),
    Column("segment", "Segment", kind="string"),
    Column("volume_ml", "Volume", "mL"),
    Column("longest_axial_diameter_mm", "Longest axial diameter", "mm"),
    Column("centroid_r", "Centre R", "mm"),
    Column("centroid_a", "Centre A", "mm"),
    Column("centroid_s", "Centre S", "mm"),
    Column("mean_hu", "Mean", "HU"),
    Column("max_hu", "Max", "HU"),
)


def lesion_rows(segmentation_node: Any, volume_node: Any, min_volume_mm3: float = 0.0) -> list[dict[str, Any]]:
    """One row per connected lesion of every segment, on the CT's grid, largest first.

    Lesions smaller than ``min_volume_mm3`` are left out. Mean and max HU are read from ``volume_node``.
    """
    if segmentation_node is None:
        raise ValueError("choose the segmentation whose lesions to list")
    if volume_node is None:
        raise ValueError("choose the CT volume the segmentation was made on; HU values are read from it")
    if min_volume_mm3 < 0:
        raise ValueError(f"the minimum lesion volume must be 0 mm³ or more, got {min_volume_mm3}")
    ct = lesionseg.mrml.image_from_volume_node(volume_node)
    labels, infos = lesionseg.mrml.labelmap_from_segmentation_node(segmentation_node, volume_node)
    names = {info.value: info.name for info in infos}
    rows = []
    for row in lesion_table(labels, ct, min_volume_mm3):
        r, a, s = row["centroid_ras_mm"]
        rows.append(
            {
                "id": row["id"],
                "segment": names.get(row["label"], f"Label_{row['label']}"),
                "volume_ml": row["volume_ml"],
                "longest_axial_diameter_mm": row["longest_axial_diameter_mm"],
                "centroid_r": r,
                "centroid_a": a,
                "centroid_s": s,
                "mean_hu": row["mean_hu"],
                "max_hu": row["max_hu"],
            }
        )
    return rows


def lesion_table_node(scene: Any, rows: Sequence[dict[str, Any]], name: str, node: Any | None = None) -> Any:
    return fill_table_node(scene, name, COLUMNS, rows, TABLE_KIND, node)


def write_lesion_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    return write_csv(path, COLUMNS, rows)


def lesion_position(table_node: Any, row: int) -> tuple[float, float, float]:
    """The RAS centre of the lesion in ``row`` of a lesion table node."""
    rows = table_rows(table_node)
    if not 0 <= row < len(rows):
        raise ValueError(f"the lesion table has {len(rows)} rows; row {row} does not exist")
    values = rows[row]
    return float(values["centroid_r"]), float(values["centroid_a"]), float(values["centroid_s"])


def jump_to_lesion(scene: Any, position_ras: Sequence[float]) -> None:
    """Centre every slice view of ``scene`` on ``position_ras``.

    This is what Markups' JumpSlicesToLocation(x, y, z, centered=True) does; the static
    vtkMRMLSliceNode.JumpAllSlices needs no module logic, so it also runs outside the app.
    """
    from slicer import vtkMRMLSliceNode

    r, a, s = (float(v) for v in position_ras)
    vtkMRMLSliceNode.JumpAllSlices(scene, r, a, s, vtkMRMLSliceNode.CenteredJumpSlice)
