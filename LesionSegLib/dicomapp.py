"""The DICOM steps that need Slicer's app: SlicerRT's exporter and Slicer's DICOM database.

Which way to export, and everything that can run without the app, is decided in
:mod:`LesionSegLib.export`; this file only makes the calls that exist inside Slicer.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import slicer

from LesionSegLib.export import (
    ROUTE_SEG_NRRD,
    ROUTE_SLICERRT,
    ExportPlan,
    dicom_export_tags,
    export_with_engine,
    file_stem,
    prepare_slicerrt_export,
)


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
    """RTSTRUCT and the CT it references, written by SlicerRT into a new subfolder of ``folder``; returns the files.

    For a CT with no DICOM series only (see :func:`LesionSegLib.export.plan_export`): SlicerRT writes the CT
    as a new series with new UIDs. Its exportables carry every patient and study tag of the CT's subject
    hierarchy, as Slicer's DICOM export dialog sets them, since SlicerRT takes the patient and study from
    the first exportable's tags and plastimatch invents them where those are empty.
    """
    import DicomRtImportExportPlugin

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # A fresh folder: SlicerRT names its files the same way each time, and all that lands here is this export's.
    target = Path(tempfile.mkdtemp(prefix=file_stem(segmentation_node.GetName()) + "_RTSTRUCT_", dir=folder))
    copy, volume_item, copy_item = prepare_slicerrt_export(scene, volume_node, segmentation_node)
    try:
        tags = dicom_export_tags(scene, volume_item)
        exporter = DicomRtImportExportPlugin.DicomRtImportExportPluginClass()
        # Both exportables in one list: SlicerRT needs the CT beside the structure set (SlicerRT#184).
        exportables = exporter.examineForExport(volume_item) + exporter.examineForExport(copy_item)
        if len(exportables) != 2:
            raise RuntimeError("SlicerRT did not offer both the CT and the segmentation for export")
        series_descriptions = (volume_node.GetName(), segmentation_node.GetName())
        for exportable, description in zip(exportables, series_descriptions, strict=True):
            exportable.directory = str(target)
            for name, value in tags.items():
                exportable.setTag(name, value)
            exportable.setTag("SeriesDescription", description)
        message = exporter.export(exportables)
        if message:
            raise RuntimeError(f"SlicerRT could not export the RTSTRUCT: {message}")
    finally:
        scene.RemoveNode(copy)
    return sorted(p for p in target.rglob("*") if p.is_file())


def import_files_into_dicom_database(files: Sequence[str | Path], database: Any = None) -> None:
    """Copy exactly ``files`` into Slicer's DICOM database (default: ``slicer.dicomDatabase``).

    The indexer is given the file list, not their folder: indexing a folder walks it recursively, and an
    export into the Desktop would otherwise copy the whole Desktop into the database.
    """
    import ctk

    database = slicer.dicomDatabase if database is None else database
    indexer = ctk.ctkDICOMIndexer()
    indexer.addListOfFiles(database, [os.fspath(path) for path in files], True)
    indexer.waitForImportFinished()
    missing = [Path(path).name for path in files if not database.fileForInstance(_instance_uid(path))]
    if missing:
        raise RuntimeError(
            f"Slicer's DICOM database did not take {', '.join(missing)}; see the Python console for the reason"
        )


def _instance_uid(path: str | Path) -> str:
    """The file's SOP instance UID; empty for a file that is not a DICOM instance (no database takes it)."""
    import pydicom

    try:
        header = pydicom.dcmread(os.fspath(path), stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        return str(header.SOPInstanceUID)
    except (pydicom.errors.InvalidDicomError, AttributeError):
        return ""


def run_export(
    plan: ExportPlan,
    scene: Any,
    volume_node: Any,
    segmentation_node: Any,
    folder: str | Path | None,
    into_database: bool,
    say: Callable[[str], None],
    import_files: Callable[[Sequence[Path]], None] | None = None,
) -> list[Path]:
    """Carry out ``plan`` into ``folder``, then import the files it wrote (only those) into the DICOM database
    when asked.

    With no folder the files are written to a fresh folder in Slicer's temporary path (the database
    import copies them). ``import_files`` imports a list of files (default:
    :func:`import_files_into_dicom_database`).
    """
    if not folder:
        folder = tempfile.mkdtemp(prefix="LesionSegExport-", dir=slicer.app.temporaryPath)
    if plan.route == ROUTE_SLICERRT:
        written = export_with_slicerrt(scene, volume_node, segmentation_node, folder)
    else:
        written = [export_with_engine(plan, segmentation_node, volume_node, folder, say=say)]
    if into_database and plan.route != ROUTE_SEG_NRRD:
        (import_files or import_files_into_dicom_database)(written)
    for path in written:
        say(f"Wrote {os.fspath(path)}")
    return written
