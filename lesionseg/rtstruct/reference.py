"""The reference image series an RTSTRUCT or DICOM SEG is drawn on: its slices and their planes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from lesionseg.dicom.geometry import orientation_frame, pixel_spacing_ij, same_orientation, sort_slices
from lesionseg.dicom.headers import GEOMETRY_TAGS, SliceHeader, find_dicom_files
from lesionseg.image import POSITION_TOLERANCE_MM, Image

# Slices closer than POSITION_TOLERANCE_MM along the normal count as one position; gaps and in-plane
# positions may vary by as much (header rounding; why that value: see lesionseg.image).


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


def read_reference_series(folder: str | Path, series_uid: str | None = None) -> ReferenceSeries:
    """Read the headers of the image series in ``folder`` and sort its slices along the normal.

    Refuses a folder with several series (unless ``series_uid`` picks one), slices that disagree
    on orientation, size or pixel spacing (a localizer filed in the series, for instance), and
    two slices at one position.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such reference series folder: {folder}")
    contents = find_dicom_files(folder, GEOMETRY_TAGS)
    if contents.unreadable:
        listing = "; ".join(f"{path.name}: {why}" for path, why in contents.unreadable[:3])
        raise ValueError(
            f"{len(contents.unreadable)} DICOM file(s) in {folder} cannot be read ({listing}); an export must "
            "reference every slice of its series: repair or remove them first"
        )
    by_series: dict[str, list[SliceHeader]] = {}
    for header in contents.headers:
        if "ImagePositionPatient" not in header.dataset or "ImageOrientationPatient" not in header.dataset:
            continue  # not an image slice (an RTSTRUCT, a report, ...)
        missing = [tag for tag in ("SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID") if not header.text(tag)]
        if missing:
            raise ValueError(
                f"{header.path.name} has no {' or '.join(missing)} (an anonymizer may have blanked it); exports must "
                "reference every slice by its UIDs: give the series its UIDs back (or re-export it) first"
            )
        by_series.setdefault(header.series_uid, []).append(header)
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

    for header in items:
        if header.position is None or header.orientation is None:
            raise ValueError(f"{header.path.name}: ImagePositionPatient or ImageOrientationPatient is malformed")
        if pixel_spacing_ij(header) is None:
            raise ValueError(
                f"{header.path.name}: an image slice without PixelSpacing; contours cannot be placed on it"
            )
    first = items[0]
    # One whole header: the patient, study and frame-of-reference tags that exports copy.
    whole = pydicom.dcmread(first.path, stop_before_pixels=True)
    spacing_ij = np.array(pixel_spacing_ij(first))
    rows_columns = (first.number("Rows"), first.number("Columns"))
    for header in items:
        if not same_orientation(header.orientation, first.orientation):
            raise ValueError(
                f"{header.path.name}: its ImageOrientationPatient differs from the other slices (a localizer?); "
                "remove it from the series folder"
            )
        if (header.number("Rows"), header.number("Columns")) != rows_columns:
            rows, columns = (header.text(tag) for tag in ("Rows", "Columns"))
            raise ValueError(f"{header.path.name}: {rows}x{columns} pixels, unlike the other slices")
        if np.abs(np.array(pixel_spacing_ij(header)) - spacing_ij).max() > 1e-4:
            raise ValueError(f"{header.path.name}: PixelSpacing differs from the other slices")
        if header.text("FrameOfReferenceUID") != first.text("FrameOfReferenceUID"):
            raise ValueError(f"{header.path.name}: FrameOfReferenceUID differs from the other slices")
    if not first.text("FrameOfReferenceUID"):
        raise ValueError(f"the series in {folder} has no FrameOfReferenceUID; contours need one")
    frame = orientation_frame(first.orientation)
    normal = frame[:, 2]
    ordered = sort_slices(items, normal)
    along = np.array([h.position @ normal for h in ordered])
    if along.size > 1 and np.diff(along).min() < POSITION_TOLERANCE_MM:
        raise ValueError(f"two slices in {folder} share one position along the slice normal; remove the duplicate")
    return ReferenceSeries(
        slices=[ReferenceSlice(h.path, h.text("SOPClassUID"), h.text("SOPInstanceUID"), h.position) for h in ordered],
        row_direction=frame[:, 0],
        column_direction=frame[:, 1],
        spacing_ij=spacing_ij,
        rows=int(first.number("Rows")),
        columns=int(first.number("Columns")),
        first=whole,
    )
