"""The DICOM steps that need Slicer's app: SlicerRT's exporter and Slicer's DICOM database.

Which way to export, and everything that can run without the app, is decided in
:mod:`LesionSegLib.export`; this file only makes the calls that exist inside Slicer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import slicer

from LesionSegLib.export import ROUTE_SEG_NRRD, ROUTE_SLICERRT, ExportPlan, export_with_engine, prepare_slicerrt_export


def slicerrt_available() -> bool:
    """Whether SlicerRT's DICOM RT plugin is loaded (SlicerRT is an optional companion extension)."""
    plugins = getattr(slicer.modules, "dicomPlugins", {})
    return "DicomRtImportExportPlugin" in plugins and hasattr(slicer.modules, "dicomrtimportexport")


def file_for_instance_lookup() -> Callable[[str], str] | None:
    """``slicer.dicomDatabase.fileForInstance``, or None when Slicer has no open DICOM database."""
    database = getattr(slicer, "dicomDatabase", None)
    if database is None or not database.isOpen:
        return None
    return database.fileForInstance


def export_with_slicerrt(scene: Any, volume_node: Any, segmentation_node: Any, folder: str | Path) -> list[Path]:
    """RTSTRUCT (and the CT it references) written by SlicerRT into ``folder``; returns the new files."""
    import DicomRtImportExportPlugin

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    before = set(folder.rglob("*"))
    copy, volume_item, copy_item = prepare_slicerrt_export(scene, volume_node, segmentation_node)
    try:
        exporter = DicomRtImportExportPlugin.DicomRtImportExportPluginClass()
        # Both exportables in one list: SlicerRT needs the CT beside the structure set (SlicerRT#184).
        exportables = exporter.examineForExport(volume_item) + exporter.examineForExport(copy_item)
        if len(exportables) != 2:
            raise RuntimeError("SlicerRT did not offer both the CT and the segmentation for export")
        for exportable in exportables:
            exportable.directory = str(folder)
        message = exporter.export(exportables)
        if message:
            raise RuntimeError(f"SlicerRT could not export the RTSTRUCT: {message}")
    finally:
        scene.RemoveNode(copy)
    return sorted(p for p in set(folder.rglob("*")) - before if p.is_file())


def import_into_dicom_database(folder: str | Path) -> None:
    """Copy the files in ``folder`` into Slicer's DICOM database (they then show in the DICOM browser)."""
    from DICOMLib import DICOMUtils

    if not DICOMUtils.importDicom(str(folder), slicer.dicomDatabase, copyFiles=True):
        raise RuntimeError(f"Slicer could not import {folder} into its DICOM database; see the Python console")


def run_export(
    plan: ExportPlan,
    scene: Any,
    volume_node: Any,
    segmentation_node: Any,
    folder: str | Path | None,
    into_database: bool,
    say: Callable[[str], None],
) -> list[Path]:
    """Carry out ``plan`` into ``folder``, then import the result into the DICOM database when asked.

    With no folder the files are written to a fresh folder in Slicer's temporary path (the database
    import copies them).
    """
    if not folder:
        import tempfile

        folder = tempfile.mkdtemp(prefix="LesionSegExport-", dir=slicer.app.temporaryPath)
    if plan.route == ROUTE_SLICERRT:
        written = export_with_slicerrt(scene, volume_node, segmentation_node, folder)
    else:
        written = [export_with_engine(plan, segmentation_node, volume_node, folder, say=say)]
    if into_database and plan.route != ROUTE_SEG_NRRD:
        import_into_dicom_database(folder)
    for path in written:
        say(f"Wrote {os.fspath(path)}")
    return written
