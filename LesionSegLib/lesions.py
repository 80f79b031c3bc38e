"""The lesion table of a segmentation: one row per connected lesion, and jumping the views to one (Qt-free)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import lesionseg.mrml
from lesionseg.metrics import lesion_table
from LesionSegLib import review
from LesionSegLib.tables import Column, fill_table_node, table_rows, write_csv

TABLE_KIND = "lesions"
# On the table node: the minimum volume it was listed with, and how many smaller lesions it leaves out.
MINIMUM_ATTRIBUTE = "LesionSeg.MinimumLesionVolumeMm3"
LEFT_OUT_ATTRIBUTE = "LesionSeg.LesionsLeftOut"

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
    # From the model's uncertainty and the lesion review (LesionSegLib.review); empty without them.
    Column("confidence", "Confidence"),
    Column("status", "Review", kind="string"),
    Column("reviewer", "Reviewer", kind="string"),
)


def lesion_rows(segmentation_node: Any, volume_node: Any, min_volume_mm3: float = 0.0) -> list[dict[str, Any]]:
    """One row per connected lesion of every segment, on the CT's grid, largest first.

    Lesions smaller than ``min_volume_mm3`` are left out of the rows (the segmentation keeps them). Mean and
    max HU are read from ``volume_node``.
    """
    return listed_lesion_rows(segmentation_node, volume_node, min_volume_mm3)[0]


def listed_lesion_rows(
    segmentation_node: Any, volume_node: Any, min_volume_mm3: float = 0.0
) -> tuple[list[dict[str, Any]], int]:
    """The rows of the lesions of at least ``min_volume_mm3`` (numbered 1.. largest first), and how many smaller
    lesions the segmentation holds that the rows leave out."""
    review.check_lesion_inputs(
        segmentation_node,
        volume_node,
        min_volume_mm3,
        "list",
        "choose the CT volume the segmentation was made on; HU values are read from it",
    )
    ct = lesionseg.mrml.image_from_volume_node(volume_node)
    labels, infos = lesionseg.mrml.labelmap_from_segmentation_node(segmentation_node, volume_node)
    names = {info.value: info.name for info in infos}
    every = lesion_table(labels, ct)
    # The engine's own criterion (voxel count times voxel volume), so the count matches lesion_table(min_volume).
    kept = [row for row in every if row["voxels"] * labels.voxel_volume_mm3 >= min_volume_mm3]
    rows = []
    for number, row in enumerate(kept, start=1):
        r, a, s = row["centroid_ras_mm"]
        rows.append(
            {
                "id": number,
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
    review.row_review_fields(segmentation_node, rows, float(np.linalg.norm(labels.spacing)))
    return rows, len(every) - len(kept)


def lesion_table_node(
    scene: Any,
    rows: Sequence[dict[str, Any]],
    name: str,
    node: Any | None = None,
    min_volume_mm3: float | None = None,
    left_out: int | None = None,
) -> Any:
    """The rows in a table node; with ``min_volume_mm3`` and ``left_out``, the node also records the filter."""
    node = fill_table_node(scene, name, COLUMNS, rows, TABLE_KIND, node)
    if min_volume_mm3 is not None and left_out is not None:
        node.SetAttribute(MINIMUM_ATTRIBUTE, repr(float(min_volume_mm3)))
        node.SetAttribute(LEFT_OUT_ATTRIBUTE, str(int(left_out)))
    return node


def listing_summary(listed: int, left_out: int, min_volume_mm3: float) -> str:
    """What the panel says under the lesion table: how many are listed, and how many smaller ones are not."""
    text = f"{listed} lesion{'' if listed == 1 else 's'} of at least {min_volume_mm3:g} mm³ listed"
    if left_out == 1:
        text += "; 1 smaller lesion is not listed, and stays in the segmentation"
    elif left_out:
        text += f"; {left_out} smaller lesions are not listed, and stay in the segmentation"
    return text + "."


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
