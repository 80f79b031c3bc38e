"""The reference image series an RTSTRUCT or DICOM SEG is drawn on: its slices and their planes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from lesionseg.image import POSITION_TOLERANCE_MM, Image

# Slices closer than POSITION_TOLERANCE_MM along the normal count as one position; gaps and in-plane
# positions may vary by as much (header rounding; why that value: see lesionseg.image).


# What the sorting and the checks need from every slice.
_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient",
    "PixelSpacing", "Rows", "Columns", "FrameOfReferenceUID",
]  # fmt: skip


@dataclass
class ReferenceSlice:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    position: np.ndarray  # ImagePositionPatient: centre of the first transmitted pixel, LPS mm


@dataclass
class ReferenceSeries:
    """One image series sorted along its slice normal (ascending), with what exports copy from it."""

    slices: list[ReferenceSlice]
    row_direction: np.ndarray  # LPS unit vector along a row (increasing column index i)
    column_direction: np.ndarray  # LPS unit vector down a column (increasing row index j)
    spacing_ij: np.ndarray  # (spacing along i, spacing along j) in mm
    rows: int
    columns: int
    first: Dataset  # a slice's header, without pixels: patient, study and frame-of-reference tags

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_direction, self.column_direction)

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.first.FrameOfReferenceUID)

    def slice_gaps(self) -> np.ndarray:
        along = np.array([s.position @ self.normal for s in self.slices])
        return np.diff(along)

    def is_regular(self) -> bool:
        """True when the slices form one regular grid (even gaps, no in-plane shift between slices)."""
        if len(self.slices) < 2:
            return True
        gaps = self.slice_gaps()
        if np.ptp(gaps) > POSITION_TOLERANCE_MM:
            return False
        step = self.normal * float(np.mean(gaps))
        drift = [np.abs(s.position - (self.slices[0].position + n * step)).max() for n, s in enumerate(self.slices)]
        return max(drift) <= POSITION_TOLERANCE_MM

    def grid(self) -> Image:
        """The series' voxel grid as an empty image (k ascending along the slice normal)."""
        if not self.is_regular():
            raise ValueError("the reference slices are unevenly spaced or shifted; they form no single grid")
        gaps = self.slice_gaps()
        # A one-slice series has no gap; any positive thickness describes the same voxel centres.
        dz = float(np.mean(gaps)) if gaps.size else float(getattr(self.first, "SliceThickness", None) or 1.0)
        direction = np.stack([self.row_direction, self.column_direction, self.normal], axis=1)
        return Image(
            np.zeros((len(self.slices), self.rows, self.columns), dtype=np.uint8),
            spacing=[self.spacing_ij[0], self.spacing_ij[1], dz],
            origin=self.slices[0].position,
            direction=direction,
        )

    def slice_grid(self, index: int) -> Image:
        """A one-slice grid for slice ``index`` (for series whose slices form no single grid)."""
        direction = np.stack([self.row_direction, self.column_direction, self.normal], axis=1)
        return Image(
            np.zeros((1, self.rows, self.columns), dtype=np.uint8),
            spacing=[self.spacing_ij[0], self.spacing_ij[1], 1.0],
            origin=self.slices[index].position,
            direction=direction,
        )

    def pixel_to_world(self, index: int, ij: np.ndarray) -> np.ndarray:
        """LPS points of continuous pixel coordinates (n, 2) = (i, j) on slice ``index``."""
        ij = np.asarray(ij, dtype=np.float64)
        return (
            self.slices[index].position
            + np.outer(ij[:, 0] * self.spacing_ij[0], self.row_direction)
            + np.outer(ij[:, 1] * self.spacing_ij[1], self.column_direction)
        )

    def datasets(self, pixels: bool = False) -> list[Dataset]:
        """The slices' datasets in sorted order (re-read from disk)."""
        return [pydicom.dcmread(s.path, stop_before_pixels=not pixels) for s in self.slices]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def read_reference_series(folder: str | Path, series_uid: str | None = None) -> ReferenceSeries:
    """Read the headers of the image series in ``folder`` and sort its slices along the normal.

    Refuses a folder with several series (unless ``series_uid`` picks one), slices that disagree
    on orientation, size or pixel spacing (a localizer filed in the series, for instance), and
    two slices at one position.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such reference series folder: {folder}")
    by_series: dict[str, list[tuple[Path, Dataset]]] = {}
    for path in _files(folder):
        try:
            # Parsing only the geometry is several times quicker than whole headers.
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
        except (InvalidDicomError, OSError):
            continue
        if "ImagePositionPatient" not in header or "ImageOrientationPatient" not in header:
            continue  # not an image slice (an RTSTRUCT, a report, ...)
        missing = [tag for tag in ("SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID") if not header.get(tag)]
        if missing:
            raise ValueError(
                f"{path.name} has no {' or '.join(missing)} (an anonymizer may have blanked it); exports must "
                "reference every slice by its UIDs: give the series its UIDs back (or re-export it) first"
            )
        by_series.setdefault(str(header.SeriesInstanceUID), []).append((path, header))
    if not by_series:
        raise ValueError(
            f"{folder} holds no DICOM image slices with a position and orientation (single-frame images; "
            "enhanced multi-frame series are not supported as a reference)"
        )
    if series_uid is None and len(by_series) > 1:
        listing = ", ".join(f"{uid} ({len(items)} files)" for uid, items in by_series.items())
        raise ValueError(f"{folder} holds {len(by_series)} image series: {listing}; give a folder with one series")
    if series_uid is not None and series_uid not in by_series:
        raise ValueError(f"series {series_uid} is not in {folder}")
    items = by_series[series_uid or next(iter(by_series))]

    for path, header in items:
        if "PixelSpacing" not in header:
            raise ValueError(f"{path.name}: an image slice without PixelSpacing; contours cannot be placed on it")
    first = items[0][1]
    # One whole header: the patient, study and frame-of-reference tags that exports copy.
    whole = pydicom.dcmread(items[0][0], stop_before_pixels=True)
    orientation = np.asarray(first.ImageOrientationPatient, dtype=float)
    spacing = np.asarray(first.PixelSpacing, dtype=float)
    for path, header in items:
        if np.abs(np.asarray(header.ImageOrientationPatient, dtype=float) - orientation).max() > 1e-4:
            raise ValueError(
                f"{path.name}: its ImageOrientationPatient differs from the other slices (a localizer?); "
                "remove it from the series folder"
            )
        if (header.Rows, header.Columns) != (first.Rows, first.Columns):
            raise ValueError(f"{path.name}: {header.Rows}x{header.Columns} pixels, unlike the other slices")
        if np.abs(np.asarray(header.PixelSpacing, dtype=float) - spacing).max() > 1e-4:
            raise ValueError(f"{path.name}: PixelSpacing differs from the other slices")
        if str(header.get("FrameOfReferenceUID", "")) != str(first.get("FrameOfReferenceUID", "")):
            raise ValueError(f"{path.name}: FrameOfReferenceUID differs from the other slices")
    if not first.get("FrameOfReferenceUID"):
        raise ValueError(f"the series in {folder} has no FrameOfReferenceUID; contours need one")
    row_dir = orientation[:3] / np.linalg.norm(orientation[:3])
    col_dir = orientation[3:] / np.linalg.norm(orientation[3:])
    normal = np.cross(row_dir, col_dir)
    slices = [
        ReferenceSlice(path, str(h.SOPClassUID), str(h.SOPInstanceUID), np.asarray(h.ImagePositionPatient, dtype=float))
        for path, h in items
    ]
    slices.sort(key=lambda s: float(s.position @ normal))
    along = np.array([s.position @ normal for s in slices])
    if along.size > 1 and np.diff(along).min() < POSITION_TOLERANCE_MM:
        raise ValueError(f"two slices in {folder} share one position along the slice normal; remove the duplicate")
    return ReferenceSeries(
        slices=slices,
        row_direction=row_dir,
        column_direction=col_dir,
        # PixelSpacing lists the distance between rows (along j) first, then between columns (along i).
        spacing_ij=np.array([spacing[1], spacing[0]]),
        rows=int(first.Rows),
        columns=int(first.Columns),
        first=whole,
    )
