"""Grouping DICOM files into studies, series and loadable sub-series.

A series (one SeriesInstanceUID) is split, as Slicer's scalar-volume plugin does, into the parts
that can each form one volume:

* localizers (ImageType LOCALIZER) are set aside, and so are DERIVED images when ORIGINAL ones
  share the series (reformats and MIPs stored beside the axial stack);
* slices are grouped by orientation and by pixel grid (rows, columns, pixel spacing);
* slices that repeat a position are split by AcquisitionNumber when that separates them;
* a stack is cut where a gap exceeds ``GAP_SPLIT_FACTOR`` typical spacings (two body regions).

Unlike Slicer, acquisitions that do not overlap stay in one volume: step-and-shoot CT numbers
each rotation as its own acquisition, and splitting those would cut one scan into slabs.
Every slice set aside is recorded with its reason, so nothing disappears silently.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lesionseg.dicom.geometry import (
    POSITION_TOLERANCE_MM,
    StackGeometry,
    orientation_frame,
    pixel_spacing_ij,
    same_orientation,
    sort_slices,
    split_at_gaps,
    stack_geometry,
)
from lesionseg.dicom.headers import SliceHeader, find_dicom_files

IMAGE_MODALITIES_WITHOUT_VOLUME = {"RTSTRUCT", "RTPLAN", "RTDOSE", "SEG", "SR", "PR", "KO", "REG", "RTRECORD"}


@dataclass
class Series:
    """One loadable stack of slices (a series, or part of one), plus what was set aside."""

    key: str  # SeriesInstanceUID, or "UID#n" when the series splits into several stacks
    slices: list[SliceHeader]
    excluded: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    geometry: StackGeometry | None = None
    group: str = ""  # the series this stack belongs to (its UID, or a folder when the UID is missing)

    @property
    def first(self) -> SliceHeader:
        return self.slices[0]

    @property
    def series_uid(self) -> str:
        return self.first.series_uid

    @property
    def study_uid(self) -> str:
        return self.first.study_uid

    @property
    def patient_id(self) -> str:
        return self.first.text("PatientID", "(no patient ID)")

    @property
    def modality(self) -> str:
        return self.first.text("Modality", "?")

    @property
    def description(self) -> str:
        return self.first.text("SeriesDescription")

    @property
    def is_volume(self) -> bool:
        """True when the slices can be built into an image (maybe with corrections)."""
        return self.geometry is not None and not self.geometry.problems

    @property
    def warnings(self) -> list[str]:
        out = list(self.notes)
        if self.geometry is not None:
            out += self.geometry.problems + self.geometry.notes
        return out


@dataclass
class Scan:
    """Everything found under a folder."""

    folder: Path
    series: list[Series]
    unreadable: list[tuple[Path, str]]
    skipped: list[Path]
    special: list[tuple[Path, str]] = field(default_factory=list)  # pipes, devices, broken links: never read

    def volumes(self) -> list[Series]:
        return [s for s in self.series if s.geometry is not None]

    def find(self, key: str) -> list[Series]:
        """Series whose key is ``key``, or all parts of the series whose UID is ``key``."""
        exact = [s for s in self.series if s.key == key]
        return exact or [s for s in self.series if s.group == key]


def _image_slices(headers: list[SliceHeader]) -> tuple[list[SliceHeader], list[tuple[Path, str]], list[str]]:
    """Drop localizers, and derived images that sit beside original ones."""
    kept: list[SliceHeader] = []
    excluded: list[tuple[Path, str]] = []
    notes: list[str] = []
    localizers = [h for h in headers if "LOCALIZER" in h.image_type]
    rest = [h for h in headers if "LOCALIZER" not in h.image_type]
    for h in localizers:
        excluded.append((h.path, "localizer (ImageType LOCALIZER)"))
    if localizers:
        notes.append(f"{len(localizers)} localizer image(s) left out")
    original = [h for h in rest if h.image_type[:1] != ("DERIVED",)]
    derived = [h for h in rest if h.image_type[:1] == ("DERIVED",)]
    if original and derived:
        for h in derived:
            excluded.append((h.path, "derived image beside original ones (ImageType DERIVED)"))
        notes.append(f"{len(derived)} derived image(s) left out")
        kept = original
    else:
        kept = rest
        if derived:
            notes.append("all images are DERIVED (a reformat or processed series)")
    multiframe = [h for h in kept if h.frames > 1]
    for h in multiframe:
        excluded.append((h.path, f"multi-frame image ({h.frames} frames): enhanced multi-frame is not supported"))
    if multiframe:
        notes.append(f"{len(multiframe)} multi-frame file(s) left out: convert them to single-frame files first")
    kept = [h for h in kept if h.frames <= 1]
    return kept, excluded, notes


def _grid_key(header: SliceHeader) -> tuple:
    spacing = pixel_spacing_ij(header)
    return (
        int(header.number("Rows", 0) or 0),
        int(header.number("Columns", 0) or 0),
        None if spacing is None else tuple(round(v, 4) for v in spacing),
    )


def _split_stacks(headers: list[SliceHeader]) -> list[list[SliceHeader]]:
    """Cut one series' slices into stacks that can each form a volume."""
    placed = [h for h in headers if h.orientation is not None and h.position is not None]
    unplaced = [h for h in headers if h.orientation is None or h.position is None]
    groups: list[tuple[np.ndarray, tuple, list[SliceHeader]]] = []
    for header in placed:
        key = _grid_key(header)
        for orientation, grid, members in groups:
            if grid == key and same_orientation(orientation, header.orientation):
                members.append(header)
                break
        else:
            groups.append((header.orientation, key, [header]))
    stacks: list[list[SliceHeader]] = []
    for orientation, _, members in groups:
        try:
            normal = orientation_frame(orientation)[:, 2]
        except ValueError:
            stacks.append(members)  # its geometry reports the bad orientation
            continue
        for part in _split_repeats(sort_slices(members, normal), normal):
            stacks.extend(split_at_gaps(sort_slices(part, normal), normal))
    if unplaced:
        stacks.append(unplaced)
    return stacks


def _has_repeats(slices: list[SliceHeader], normal: np.ndarray) -> bool:
    heights = np.sort([float(s.position @ normal) for s in slices])
    return bool(np.any(np.diff(heights) < POSITION_TOLERANCE_MM))


def _split_repeats(slices: list[SliceHeader], normal: np.ndarray) -> list[list[SliceHeader]]:
    if not _has_repeats(slices, normal):
        return [slices]
    by_acquisition: dict[str, list[SliceHeader]] = defaultdict(list)
    for header in slices:
        by_acquisition[header.text("AcquisitionNumber")].append(header)
    parts = [by_acquisition[k] for k in sorted(by_acquisition, key=lambda a: (len(a), a))]
    if len(parts) > 1 and not any(_has_repeats(p, normal) for p in parts):
        return parts
    # Nothing separates them: keep one stack, whose geometry then reports the repeated positions.
    return [slices]


def _by_frame_of_reference(headers: list[SliceHeader]) -> list[list[SliceHeader]]:
    """Slices grouped by FrameOfReferenceUID, in order of first appearance (a missing UID is one group)."""
    groups: dict[str, list[SliceHeader]] = defaultdict(list)
    for header in headers:
        groups[header.text("FrameOfReferenceUID")].append(header)
    return list(groups.values())


def _series_key(header: SliceHeader) -> str:
    if header.text("SeriesInstanceUID"):
        return header.series_uid
    # Anonymisers sometimes strip the UID; files in one folder are then the best guess at a series.
    return f"no-series-uid:{header.path.parent}"


def group_series(headers: list[SliceHeader]) -> list[Series]:
    """Group headers by series UID, then split each series into loadable stacks."""
    by_series: dict[str, list[SliceHeader]] = defaultdict(list)
    for header in headers:
        by_series[_series_key(header)].append(header)
    out: list[Series] = []
    for uid, members in by_series.items():
        images = [h for h in members if h.has_pixels and h.text("Modality") not in IMAGE_MODALITIES_WITHOUT_VOLUME]
        if not images:
            out.append(
                Series(uid, members, notes=[f"not an image series ({members[0].text('Modality', '?')})"], group=uid)
            )
            continue
        kept, excluded, notes = _image_slices(images)
        if uid.startswith("no-series-uid:"):
            notes.append("SeriesInstanceUID is missing: the files of one folder were taken as one series")
        others = [h for h in members if h not in images]
        if others:
            notes.append(f"{len(others)} non-image object(s) in the series ignored")
        if not kept:
            out.append(Series(uid, images, excluded, notes + ["no slices left to build a volume from"], group=uid))
            continue
        frames = _by_frame_of_reference(kept)
        if len(frames) > 1:
            # Positions in two frames of reference are in two unrelated coordinate systems: stacking them
            # would make a volume whose geometry means nothing, so each frame becomes its own sub-series.
            notes.append(
                f"the slices carry {len(frames)} FrameOfReferenceUIDs: split by frame of reference "
                "(slices from different frames cannot form one volume)"
            )
        stacks = [stack for members in frames for stack in _split_stacks(members)]
        if len(stacks) > 1:
            notes = notes + [
                f"split into {len(stacks)} sub-series (frame of reference, orientation, pixel grid, repeats or gaps)"
            ]
        for number, stack in enumerate(stacks, start=1):
            key = uid if len(stacks) == 1 else f"{uid}#{number}"
            out.append(Series(key, stack, list(excluded), list(notes), stack_geometry(stack), group=uid))
    out.sort(key=lambda s: (s.patient_id, s.first.text("StudyDate"), s.study_uid, _series_number(s), s.key))
    return out


def _series_number(series: Series) -> float:
    return series.first.number("SeriesNumber", 0) or 0


def scan_folder(folder: str | os.PathLike) -> Scan:
    """Find and group every DICOM series under ``folder`` (non-DICOM files are skipped)."""
    contents = find_dicom_files(folder)
    return Scan(Path(folder), group_series(contents.headers), contents.unreadable, contents.skipped, contents.special)
