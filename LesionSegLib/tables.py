"""Result rows into a ``vtkMRMLTableNode`` and into CSV, with the same columns for both (Qt-free)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lesionseg.io.atomic import write_bytes_atomic

# Tag on every table LesionSeg fills, so a module can find its own table again after a scene reload.
TABLE_KIND_ATTRIBUTE = "LesionSeg.TableKind"


@dataclass(frozen=True)
class Column:
    """One column: ``key`` names it in the rows, the table node and the CSV header."""

    key: str
    title: str
    unit: str = ""
    kind: str = "double"  # "double", "int" or "string"

    @property
    def header(self) -> str:
        return f"{self.title} ({self.unit})" if self.unit else self.title


def _array(column: Column) -> Any:
    import vtk

    array = {"double": vtk.vtkDoubleArray, "int": vtk.vtkIntArray, "string": vtk.vtkStringArray}[column.kind]()
    array.SetName(column.key)
    return array


def fill_table_node(
    scene: Any,
    name: str,
    columns: Sequence[Column],
    rows: Iterable[dict[str, Any]],
    kind: str,
    node: Any | None = None,
) -> Any:
    """Put ``rows`` into ``node`` (or a new table node in ``scene``) and return it.

    A missing number is shown as an empty cell (NaN in a double column); the table is locked, because
    it is a result, not an input for the user to edit.
    """
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    rows = list(rows)
    was_modifying = node.StartModify()
    try:
        node.SetLocked(False)
        node.RemoveAllColumns()
        for column in columns:
            array = _array(column)
            for row in rows:
                value = row.get(column.key)
                if column.kind == "string":
                    array.InsertNextValue("" if value is None else str(value))
                elif column.kind == "int":
                    array.InsertNextValue(0 if value is None else int(value))
                else:
                    array.InsertNextValue(math.nan if value is None else float(value))
            node.AddColumn(array)
            node.SetColumnTitle(column.key, column.header)
            if column.unit:
                node.SetColumnUnitLabel(column.key, column.unit)
        node.SetUseColumnTitleAsColumnHeader(True)
        node.SetAttribute(TABLE_KIND_ATTRIBUTE, kind)
        node.SetLocked(True)
    finally:
        node.EndModify(was_modifying)
    return node


def table_rows(node: Any) -> list[dict[str, Any]]:
    """The rows of a table node as dictionaries keyed by column name (numbers as float/int)."""
    table = node.GetTable()
    out = []
    for row in range(table.GetNumberOfRows()):
        values = {}
        for index in range(table.GetNumberOfColumns()):
            array = table.GetColumn(index)
            value = array.GetValue(row)
            if array.GetClassName() == "vtkDoubleArray" and math.isnan(value):
                value = None
            values[array.GetName()] = value
        out.append(values)
    return out


def csv_text(columns: Sequence[Column], rows: Iterable[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([column.key for column in columns])
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column.key)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                cells.append("")
            elif isinstance(value, float):
                cells.append(repr(value))
            else:
                cells.append(str(value))
        writer.writerow(cells)
    return buffer.getvalue()


def write_csv(path: str | Path, columns: Sequence[Column], rows: Iterable[dict[str, Any]]) -> Path:
    """Write the rows as CSV (one header line of column keys), atomically; returns the path."""
    path = Path(path)
    if path.suffix.lower() != ".csv":
        raise ValueError(f"{path.name}: give the CSV file a .csv name")
    write_bytes_atomic(path, csv_text(columns, rows).encode("utf-8"))
    return path
