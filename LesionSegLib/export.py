"""Exporting a segmentation: which way is possible, what is missing, and the Qt-free writers.

Three ways out, chosen by :func:`plan_export`:

* RTSTRUCT or DICOM SEG through the engine's writers, on the CT's own DICOM files, for a CT loaded from
  DICOM: the object references the original slices and copies patient and study from them;
* RTSTRUCT through SlicerRT's DICOM plugin for a CT with no DICOM series, when SlicerRT is installed: it
  writes the CT as a new series beside the structure set, with patient and study tags taken from subject
  hierarchy (:func:`prepare_slicerrt_export` and :func:`dicom_export_tags` ready it; the app-side call
  lives in :mod:`LesionSegLib.dicomapp`);
* ``.seg.nrrd`` for any volume.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import re
import shutil
import string
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lesionseg.mrml
from lesionseg.dicom.names import UTF8, fit_names
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
    None when there is no DICOM database). ``slicerrt_available`` only matters for an RTSTRUCT of a CT with
    no DICOM series. ``dicomseg_problem`` says why DICOM SEG cannot be written here (None:
    :func:`dicomseg_packages_problem` decides).
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
        if format == RTSTRUCT and slicerrt_available:
            # SlicerRT writes the CT itself as a new series, so the structure set has a series to reference.
            return ExportPlan(format, ROUTE_SLICERRT)
        also = (
            " (or install SlicerRT, which writes the CT as a new DICOM series beside the RTSTRUCT)"
            if format == RTSTRUCT
            else ""
        )
        return ExportPlan(
            format,
            None,
            problem=(
                f"{volume_node.GetName()!r} was not loaded from DICOM, so there is no DICOM series for a {format} "
                "to reference. Save the segmentation as .seg.nrrd instead, or load the CT through the DICOM "
                f"module{also}."
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
    # The engine's writers, not SlicerRT, for a CT from DICOM: SlicerRT would write a second copy of the CT
    # with new UIDs, and takes the patient from its exportables' tags rather than from the slices.
    route = ROUTE_ENGINE_RTSTRUCT if format == RTSTRUCT else ROUTE_ENGINE_DICOMSEG
    return ExportPlan(format, route, reference_files=files)


def short_roi_names(names: Sequence[str]) -> list[str]:
    """The names as valid, distinct ROI Observation Labels, which SlicerRT fills from segment names.

    SH holds 16 bytes; counted in UTF-8, the widest encoding a writer may use.
    """
    return fit_names(names, "SH", UTF8, what="ROI Observation Label").names


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


@contextlib.contextmanager
def exported_node(segmentation_node: Any, volume_node: Any, accepted_only: bool) -> Iterator[Any]:
    """The node an export writes: the segmentation itself, or with ``accepted_only`` a temporary copy whose
    lesion segments hold only the lesions accepted in its review (:mod:`LesionSegLib.review`)."""
    if not accepted_only:
        yield segmentation_node
        return
    from LesionSegLib import review

    copy = review.accepted_segmentation_node(segmentation_node, volume_node)
    try:
        yield copy
    finally:
        copy.GetScene().RemoveNode(copy)


def export_with_engine(
    plan: ExportPlan,
    segmentation_node: Any,
    volume_node: Any,
    output_folder: str | Path,
    say: Callable[[str], None] = print,
    accepted_only: bool = False,
) -> Path:
    """Write the file ``plan`` describes into ``output_folder``; returns its path.

    For the DICOM routes the segmentation is rasterised on the CT's grid and written against the CT's
    own files; for ``seg-nrrd`` the segmentation node is saved as it is. With ``accepted_only`` the lesion
    segments carry only the lesions accepted in the node's review (the other segments stay whole).
    """
    if not plan.possible:
        raise ValueError(plan.problem)
    if accepted_only:
        with exported_node(segmentation_node, volume_node, True) as copy:
            return export_with_engine(plan, copy, volume_node, output_folder, say)
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


def _constants() -> Any:
    """Slicer's ``vtkMRMLSubjectHierarchyConstants``: DICOM tag names, attribute prefix and levels."""
    from slicer import vtkMRMLSubjectHierarchyConstants

    return vtkMRMLSubjectHierarchyConstants


def _default_patient_item(hierarchy: Any) -> int:
    """A patient item with the identity Slicer's DICOM export dialog gives one it creates: "Anonymous" and
    a random six-letter ID (a CT with no DICOM series has no patient to copy)."""
    name = "Anonymous"
    patient_id = "".join(random.choice(string.ascii_uppercase) for _ in range(6))
    prefix = _constants().GetDICOMAttributePrefix()
    item = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), f"{name} ({patient_id})")
    hierarchy.SetItemAttribute(item, prefix + "PatientName", name)
    hierarchy.SetItemAttribute(item, prefix + "PatientID", patient_id)
    return item


def _default_study_item(hierarchy: Any, patient_item: int, now: datetime.datetime | None = None) -> int:
    """A study item as Slicer's DICOM export dialog creates one: a new StudyInstanceUID, today's date and time."""
    from pydicom.uid import generate_uid

    now = now or datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    description = "No study description"
    uid = str(generate_uid())
    constants = _constants()
    prefix = constants.GetDICOMAttributePrefix()
    item = hierarchy.CreateStudyItem(patient_item, f"{description} ({date})")
    # SlicerRT reads the study UID from the item's DICOM UID, the dialog from its attribute: set both.
    hierarchy.SetItemUID(item, constants.GetDICOMUIDName(), uid)
    for name, value in (
        ("StudyInstanceUID", uid),
        ("StudyDescription", description),
        ("StudyDate", date),
        ("StudyTime", time),
    ):
        hierarchy.SetItemAttribute(item, prefix + name, value)
    return item


def _is_level(hierarchy: Any, item: int, level: str) -> bool:
    return (
        item != hierarchy.GetSceneItemID()
        and item != hierarchy.GetInvalidItemID()
        and (hierarchy.GetItemLevel(item) == level)
    )


def dicom_export_tags(scene: Any, item: int) -> dict[str, str]:
    """The patient and study tags of a DICOM exportable for subject hierarchy ``item``, as Slicer's DICOM
    export dialog fills them: every standard patient and study tag (empty where the hierarchy holds none),
    then every other ``DICOM.`` attribute of the item's patient and study.

    The item must sit under a study under a patient; :func:`prepare_slicerrt_export` places it so.
    """
    from slicer import vtkMRMLSubjectHierarchyNode

    constants = _constants()
    hierarchy = vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = hierarchy.GetItemParent(item)
    patient = hierarchy.GetItemParent(study) if study != hierarchy.GetInvalidItemID() else study
    if not _is_level(hierarchy, study, constants.GetDICOMLevelStudy()) or not _is_level(
        hierarchy, patient, constants.GetDICOMLevelPatient()
    ):
        raise ValueError(
            f"{hierarchy.GetItemName(item)!r} is not under a study under a patient in subject hierarchy, so it "
            "has no patient and study to export; place it under one in the Data module"
        )
    prefix = constants.GetDICOMAttributePrefix()
    tags: dict[str, str] = {}
    for owner, names in ((patient, constants.GetDICOMPatientTagNames()), (study, constants.GetDICOMStudyTagNames())):
        for name in names:
            tags[name] = hierarchy.GetItemAttribute(owner, prefix + name) or ""
        for attribute in hierarchy.GetItemAttributeNames(owner):
            if attribute.startswith(prefix) and len(attribute) > len(prefix):
                tags[attribute[len(prefix) :]] = hierarchy.GetItemAttribute(owner, attribute) or ""
    if not tags["StudyInstanceUID"]:
        # Studies loaded by the DICOM module carry the UID as the item's DICOM UID only.
        tags["StudyInstanceUID"] = hierarchy.GetItemUID(study, constants.GetDICOMUIDName()) or ""
    return tags


def prepare_slicerrt_export(scene: Any, volume_node: Any, segmentation_node: Any) -> tuple[Any, int, int]:
    """A copy of the segmentation with ROI-safe names, under the CT's study in subject hierarchy.

    Returns (copy, CT item, copy item). SlicerRT exports both items together (it fails without the CT,
    SlicerRT#184), and only when they share a study; the user's own segmentation is left untouched.
    A CT that is not under a study under a patient gets a default patient and study, as Slicer's DICOM
    export dialog makes them. The caller removes the copy after the export.
    """
    from slicer import vtkMRMLSubjectHierarchyNode

    constants = _constants()
    hierarchy = vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    volume_item = _item(hierarchy, volume_node)
    study_item = hierarchy.GetItemParent(volume_item)
    if not _is_level(hierarchy, study_item, constants.GetDICOMLevelStudy()):
        study_item = _default_study_item(hierarchy, _default_patient_item(hierarchy))
        hierarchy.SetItemParent(volume_item, study_item)
    elif not _is_level(hierarchy, hierarchy.GetItemParent(study_item), constants.GetDICOMLevelPatient()):
        hierarchy.SetItemParent(study_item, _default_patient_item(hierarchy))
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
