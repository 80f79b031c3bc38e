"""Exporting a segmentation: which way is possible, what is missing, and the Qt-free writers.

Three ways out, chosen by :func:`plan_export`:

* RTSTRUCT through SlicerRT's DICOM plugin when SlicerRT is installed (the app-side call lives in the
  module logic; :func:`prepare_slicerrt_export` readies the scene for it);
* RTSTRUCT or DICOM SEG through the engine's writers, on the CT's own DICOM files;
* ``.seg.nrrd`` when the CT has no DICOM origin, since every DICOM object needs a series to reference.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lesionseg.mrml
from lesionseg.dicomseg import export_dicomseg
from lesionseg.io.atomic import atomic_path
from lesionseg.labels import LabelInfo
from lesionseg.rtstruct import export_rtstruct

RTSTRUCT = "RTSTRUCT"
DICOM_SEG = "DICOM SEG"
SEG_NRRD = "NRRD"
FORMATS = (RTSTRUCT, DICOM_SEG, SEG_NRRD)

ROUTE_SLICERRT = "slicerrt"
ROUTE_ENGINE_RTSTRUCT = "engine-rtstruct"
ROUTE_ENGINE_DICOMSEG = "engine-dicomseg"
ROUTE_SEG_NRRD = "seg-nrrd"

# DICOM's ROIObservationLabel is a short string (SH): 16 characters at most. SlicerRT writes segment names
# there, and longer ones make an invalid object.
ROI_LABEL_LIMIT = 16


@dataclass
class ExportPlan:
    """How a segmentation can be exported in ``format``; ``problem`` is empty when ``route`` works."""

    format: str
    route: str | None
    reference_files: list[str] = field(default_factory=list)
    problem: str = ""
    alternatives: list[str] = field(default_factory=list)

    @property
    def possible(self) -> bool:
        return self.route is not None


def instance_uids(volume_node: Any) -> list[str]:
    """The SOP instance UIDs Slicer's DICOM loader stored on the volume (empty when not from DICOM)."""
    value = volume_node.GetAttribute("DICOM.instanceUIDs") if volume_node is not None else None
    return value.split() if value else []


def dicomseg_packages_problem() -> str:
    """Why this Python cannot write DICOM SEG (the engine builds it with highdicom), or "" when it can."""
    import importlib.util

    if importlib.util.find_spec("highdicom") is not None:
        return ""
    return (
        "DICOM SEG export needs the highdicom package, which this Slicer does not have. Install it from the "
        "Python console with slicer.util.pip_install('highdicom') (on Slicer 5.10 this also upgrades the bundled "
        "pydicom 2.4 to 3), or export RTSTRUCT or .seg.nrrd instead."
    )


def plan_export(
    volume_node: Any,
    segmentation_node: Any,
    format: str,
    slicerrt_available: bool,
    file_for_instance: Callable[[str], str] | None,
    dicomseg_problem: str | None = None,
) -> ExportPlan:
    """Decide how to export ``segmentation_node`` (drawn on ``volume_node``) as ``format``.

    ``file_for_instance`` maps a SOP instance UID to its file (Slicer: ``slicer.dicomDatabase.fileForInstance``;
    None when there is no DICOM database). ``dicomseg_problem`` says why DICOM SEG cannot be written here
    (None: :func:`dicomseg_packages_problem` decides).
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if segmentation_node is None:
        raise ValueError("choose the segmentation to export")
    if segmentation_node.GetSegmentation().GetNumberOfSegments() == 0:
        raise ValueError(f"{segmentation_node.GetName()!r} holds no segments; there is nothing to export")
    if format == SEG_NRRD:
        return ExportPlan(format, ROUTE_SEG_NRRD)
    fallback = [SEG_NRRD]
    if format == DICOM_SEG:
        problem = dicomseg_packages_problem() if dicomseg_problem is None else dicomseg_problem
        if problem:
            return ExportPlan(format, None, problem=problem, alternatives=[RTSTRUCT, SEG_NRRD])
    if volume_node is None:
        return ExportPlan(
            format, None, problem="choose the CT volume the segmentation was made on", alternatives=fallback
        )
    uids = instance_uids(volume_node)
    if not uids:
        return ExportPlan(
            format,
            None,
            problem=(
                f"{volume_node.GetName()!r} was not loaded from DICOM, so there is no DICOM series for a {format} "
                "to reference. Save the segmentation as .seg.nrrd instead, or load the CT through the DICOM module."
            ),
            alternatives=fallback,
        )
    if file_for_instance is None:
        return ExportPlan(
            format,
            None,
            problem="there is no DICOM database to find the CT's files in; open the DICOM module once to create it",
            alternatives=fallback,
        )
    files = [file_for_instance(uid) or "" for uid in uids]
    missing = [uid for uid, path in zip(uids, files, strict=True) if not path or not os.path.isfile(path)]
    if missing:
        return ExportPlan(
            format,
            None,
            problem=(
                f"{len(missing)} of the {len(uids)} DICOM files of {volume_node.GetName()!r} are no longer in the "
                f"DICOM database (e.g. instance {missing[0]}); import the series again, or save as .seg.nrrd."
            ),
            alternatives=fallback,
        )
    if format == RTSTRUCT:
        route = ROUTE_SLICERRT if slicerrt_available else ROUTE_ENGINE_RTSTRUCT
    else:
        route = ROUTE_ENGINE_DICOMSEG
    return ExportPlan(format, route, reference_files=files)


def short_roi_names(names: Sequence[str], limit: int = ROI_LABEL_LIMIT) -> list[str]:
    """The names cut to ``limit`` characters, kept distinct (a clash gets a ``~n`` ending)."""
    out: list[str] = []
    for name in names:
        # DICOM drops trailing spaces of a short string, so a cut never ends in one.
        base = " ".join(name.split())[:limit].rstrip() or "Segment"
        candidate, number = base, 1
        while candidate in out:
            number += 1
            ending = f"~{number}"
            candidate = base[: limit - len(ending)].rstrip() + ending
        out.append(candidate)
    return out


def file_stem(name: str) -> str:
    """A file name part from a node name: letters, digits, '-', '_' and '.' only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_.") or "segmentation"


def _reference_folder(files: Sequence[str], folder: Path) -> Path:
    """The CT's files gathered in one folder, as the engine's writers read a series from a folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for number, source in enumerate(files):
        target = folder / f"{number:05d}.dcm"
        try:
            os.link(source, target)  # no copy of a large series when the file system allows it
        except OSError:
            shutil.copy2(source, target)
    return folder


def _labels(segmentation_node: Any, volume_node: Any, shorten: bool) -> tuple[Any, list[LabelInfo]]:
    labelmap, infos = lesionseg.mrml.labelmap_from_segmentation_node(segmentation_node, volume_node)
    if shorten:
        names = short_roi_names([info.name for info in infos])
        infos = [
            LabelInfo(info.value, name, info.color, info.terminology) for info, name in zip(infos, names, strict=True)
        ]
    return labelmap, infos


def export_with_engine(
    plan: ExportPlan,
    segmentation_node: Any,
    volume_node: Any,
    output_folder: str | Path,
    say: Callable[[str], None] = print,
) -> Path:
    """Write the file ``plan`` describes into ``output_folder``; returns its path.

    For the DICOM routes the segmentation is rasterised on the CT's grid and written against the CT's
    own files; for ``seg-nrrd`` the segmentation node is saved as it is.
    """
    if not plan.possible:
        raise ValueError(plan.problem)
    output_folder = Path(output_folder)
    output_folder.mkdir(parents=True, exist_ok=True)
    stem = file_stem(segmentation_node.GetName())
    if plan.route == ROUTE_SEG_NRRD:
        return save_seg_nrrd(segmentation_node, output_folder / f"{stem}.seg.nrrd")
    if plan.route not in (ROUTE_ENGINE_RTSTRUCT, ROUTE_ENGINE_DICOMSEG):
        raise ValueError(f"the {plan.route} route is run by the module logic inside Slicer, not by the engine")
    with tempfile.TemporaryDirectory(prefix="lesionseg-export-") as scratch:
        reference = _reference_folder(plan.reference_files, Path(scratch) / "reference")
        if plan.route == ROUTE_ENGINE_RTSTRUCT:
            labelmap, infos = _labels(segmentation_node, volume_node, shorten=True)
            return export_rtstruct(reference, labelmap, output_folder / f"{stem}_RTSTRUCT.dcm", labels=infos, say=say)
        labelmap, infos = _labels(segmentation_node, volume_node, shorten=False)
        return export_dicomseg(reference, labelmap, output_folder / f"{stem}_SEG.dcm", labels=infos, say=say)


def save_seg_nrrd(segmentation_node: Any, path: str | Path) -> Path:
    """Save the segmentation node as ``.seg.nrrd`` (segment names, colours, terminology kept), atomically."""
    from slicer import vtkMRMLSegmentationStorageNode

    path = Path(path)
    if not path.name.endswith(".seg.nrrd"):
        raise ValueError(f"{path.name}: a segmentation file needs the .seg.nrrd ending")
    storage = vtkMRMLSegmentationStorageNode()
    with atomic_path(path) as temporary:
        # atomic_path keeps only the last suffix; the storage node needs the full .seg.nrrd ending.
        temporary = Path(temporary)
        staged = temporary.with_name(temporary.name.removesuffix(".nrrd") + ".seg.nrrd")
        storage.SetFileName(str(staged))
        if not storage.WriteData(segmentation_node):
            raise RuntimeError(f"Slicer could not write {path}")
        os.replace(staged, temporary)
    return path


def _item(hierarchy: Any, node: Any) -> int:
    """The node's subject hierarchy item; Slicer's app makes one for every node, bare MRML does not."""
    item = hierarchy.GetItemByDataNode(node)
    if item == hierarchy.GetInvalidItemID():
        item = hierarchy.CreateItem(hierarchy.GetSceneItemID(), node)
    return item


def prepare_slicerrt_export(scene: Any, volume_node: Any, segmentation_node: Any) -> tuple[Any, int, int]:
    """A copy of the segmentation with ROI-safe names, under the CT's study in subject hierarchy.

    Returns (copy, CT item, copy item). SlicerRT exports both items together (it fails without the CT,
    SlicerRT#184), and only when they share a study; the user's own segmentation is left untouched.
    The caller removes the copy after the export.
    """
    from slicer import vtkMRMLSubjectHierarchyNode

    hierarchy = vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    volume_item = _item(hierarchy, volume_node)
    study_item = hierarchy.GetItemParent(volume_item)
    if study_item == hierarchy.GetSceneItemID() or hierarchy.GetItemLevel(study_item) != "Study":
        # A CT loaded by the DICOM module sits under its study; one that does not gets a study of its
        # own so that SlicerRT can write both objects into one.
        patient_item = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), volume_node.GetName())
        study_item = hierarchy.CreateStudyItem(patient_item, volume_node.GetName())
        hierarchy.SetItemParent(volume_item, study_item)
    copy = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", segmentation_node.GetName() + " (RTSTRUCT export)")
    copy.GetSegmentation().DeepCopy(segmentation_node.GetSegmentation())
    copy.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    segmentation = copy.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    names = short_roi_names([segmentation.GetSegment(i).GetName() for i in ids])
    for segment_id, name in zip(ids, names, strict=True):
        segmentation.GetSegment(segment_id).SetName(name)
    copy_item = _item(hierarchy, copy)
    hierarchy.SetItemParent(copy_item, study_item)
    return copy, volume_item, copy_item
