"""The grid a stack of DICOM slices spans, and what is wrong with it.

The slice normal is ``row direction × column direction`` (both from ImageOrientationPatient);
slices are ordered by the projection of ImagePositionPatient onto it, never by file name or
InstanceNumber.  A stack is *regular* when its slices are equally spaced along the normal and
each lies straight above the first.  Otherwise the problems are described, so the caller can
resample (with a warning) or refuse - never stack slices as if they were regular.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lesionseg.dicom.headers import SliceHeader
from lesionseg.image import POSITION_TOLERANCE_MM

# Gaps and directions accept the same header rounding as positions (see POSITION_TOLERANCE_MM), and nothing bigger.
SPACING_RELATIVE_TOLERANCE = 1e-3
ORIENTATION_TOLERANCE = 1e-3
# A gap wider than this many typical spacings splits a stack into two sub-series
# (two body regions in one series); narrower gaps are missing slices, filled by interpolation.
GAP_SPLIT_FACTOR = 3.0
# Resampling an irregular stack may not multiply its slice count by more than this.
MAX_RESAMPLE_GROWTH = 4.0


def orientation_frame(orientation: np.ndarray) -> np.ndarray:
    """3×3 matrix with columns (row direction, column direction, normal) from IOP's six values."""
    u = np.asarray(orientation[:3], dtype=float)
    v = np.asarray(orientation[3:], dtype=float)
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    if nu < 1e-6 or nv < 1e-6:
        raise ValueError(f"ImageOrientationPatient {orientation.tolist()} has a zero-length direction")
    u, v = u / nu, v / nv
    if abs(float(u @ v)) > ORIENTATION_TOLERANCE:
        raise ValueError(
            f"ImageOrientationPatient {orientation.tolist()}: row and column directions are not perpendicular"
        )
    # Remove the rounding left by 16-character DS values so the direction is exactly orthonormal.
    v = v - (u @ v) * u
    v /= np.linalg.norm(v)
    return np.column_stack([u, v, np.cross(u, v)])


def same_orientation(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.abs(np.asarray(a) - np.asarray(b)).max() <= ORIENTATION_TOLERANCE)


def pixel_spacing_ij(header: SliceHeader) -> tuple[float, float] | None:
    """(spacing along i, spacing along j) in mm: PixelSpacing lists rows (j) first."""
    values = header.floats("PixelSpacing", 2)
    if values is None or np.any(values <= 0):
        return None
    return float(values[1]), float(values[0])


@dataclass
class StackGeometry:
    """Where a sorted stack of slices lies, and how it departs from a regular grid."""

    slices: list[SliceHeader]
    direction: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    heights: np.ndarray  # distance of each slice from the first along the normal (mm)
    in_plane_offsets: np.ndarray  # (n, 2): offset of each slice from the first along i and j (mm)
    tilt_degrees: float = 0.0
    irregular: bool = False
    # Why the in-plane spacing is a guess (PixelSpacing missing, zero or malformed), or None when it is known.
    spacing_assumed: str | None = None
    problems: list[str] = field(default_factory=list)  # reasons the stack cannot be built at all
    notes: list[str] = field(default_factory=list)  # what will be corrected, for the user

    @property
    def size(self) -> tuple[int, int, int]:
        header = self.slices[0]
        return int(header.number("Columns", 0)), int(header.number("Rows", 0)), self.slice_count

    @property
    def slice_count(self) -> int:
        """Number of slices of the regular grid (after any resampling)."""
        if len(self.heights) < 2:
            return 1
        return int(round(self.heights[-1] / self.spacing[2])) + 1

    @property
    def tilted(self) -> bool:
        return self.tilt_degrees > 0.0


def sort_slices(slices: list[SliceHeader], normal: np.ndarray) -> list[SliceHeader]:
    return sorted(slices, key=lambda s: (float(s.position @ normal), s.number("InstanceNumber", 0) or 0))


def stack_geometry(slices: list[SliceHeader]) -> StackGeometry:
    """Describe the grid of slices that share one orientation and pixel grid."""
    if not slices:
        raise ValueError("a stack needs at least one slice")
    first = slices[0]
    problems: list[str] = []
    notes: list[str] = []
    orientation = first.orientation
    unplaceable = None
    if orientation is None or any(s.position is None for s in slices):
        missing = "ImageOrientationPatient" if orientation is None else "ImagePositionPatient"
        unplaceable = f"{missing} is missing, so the slices cannot be placed in space"
    else:
        try:
            frame = orientation_frame(orientation)
        except ValueError as error:
            unplaceable = str(error)
    if unplaceable is not None:
        n = len(slices)
        return StackGeometry(
            slices, np.eye(3), np.zeros(3), np.ones(3), np.zeros(n), np.zeros((n, 2)), problems=[unplaceable]
        )
    normal = frame[:, 2]
    ordered = sort_slices(slices, normal)
    positions = np.array([s.position for s in ordered])
    relative = positions - positions[0]
    heights = relative @ normal
    offsets = relative @ frame[:, :2]

    in_plane = pixel_spacing_ij(first)
    spacing_assumed = None
    if in_plane is None:
        raw = first.dataset.get("PixelSpacing")
        if raw is None or raw == "":
            spacing_assumed = "PixelSpacing is missing"
        else:
            many = not isinstance(raw, str) and hasattr(raw, "__len__")
            shown = "\\".join(str(v) for v in raw) if many else str(raw)
            spacing_assumed = f"PixelSpacing is {shown} (not a pixel size)"
        notes.append(f"{spacing_assumed}: 1 mm pixels ASSUMED, so sizes and volumes measured on it are not real")
        in_plane = (1.0, 1.0)

    tilt = 0.0
    if len(ordered) > 1:
        span = float(heights[-1])
        drift = float(np.linalg.norm(offsets, axis=1).max())
        if drift > POSITION_TOLERANCE_MM + 1e-5 * abs(span):
            tilt = math.degrees(math.atan2(float(np.linalg.norm(offsets[-1])), span)) if span > 0 else 90.0
            tilt = max(tilt, 1e-6)
            stated = first.number("GantryDetectorTilt")
            stated_text = f"; GantryDetectorTilt says {stated:g}°" if stated is not None else ""
            notes.append(
                f"gantry tilt of {tilt:.2f}° (slices shift {drift:.2f} mm sideways{stated_text}): "
                "each slice is shifted in-plane onto an orthogonal grid (linear interpolation)"
            )

    irregular = False
    if len(ordered) == 1:
        thickness = first.number("SpacingBetweenSlices") or first.number("SliceThickness")
        if not thickness or thickness <= 0:
            notes.append("single slice without SliceThickness: 1 mm assumed for its depth")
            thickness = 1.0
        dz = float(thickness)
    else:
        gaps = np.diff(heights)
        duplicates = int(np.count_nonzero(gaps < POSITION_TOLERANCE_MM))
        if duplicates:
            problems.append(
                f"{duplicates} slice(s) share a position with another slice (several acquisitions or echoes "
                "in one series); they cannot be stacked into one volume"
            )
            dz = float(np.median(gaps)) or 1.0
        else:
            typical = float(np.median(gaps))
            tolerance = max(POSITION_TOLERANCE_MM, SPACING_RELATIVE_TOLERANCE * typical)
            if np.abs(gaps - typical).max() <= tolerance:
                dz = float(heights[-1]) / (len(ordered) - 1)
            else:
                irregular = True
                finest = float(gaps.min())
                count = int(round(float(heights[-1]) / finest)) + 1
                if count > MAX_RESAMPLE_GROWTH * len(ordered) + 10:
                    problems.append(
                        f"slice spacing varies from {gaps.min():.3g} to {gaps.max():.3g} mm; a regular grid at the "
                        f"finest spacing would need {count} slices for {len(ordered)} acquired"
                    )
                    count = len(ordered)
                dz = float(heights[-1]) / (count - 1)
                missing = [g for g in gaps if g > 1.5 * typical]
                what = (
                    f"{sum(int(round(g / typical)) - 1 for g in missing)} slice(s) missing"
                    if missing and np.abs(gaps[gaps <= 1.5 * typical] - typical).max(initial=0) <= tolerance
                    else f"non-uniform slice spacing ({gaps.min():.4g} to {gaps.max():.4g} mm)"
                )
                notes.append(
                    f"{what}: resampled to a regular {dz:.4g} mm grid by linear interpolation "
                    f"({count} slices from {len(ordered)})"
                )
    spacing = np.array([in_plane[0], in_plane[1], dz])
    return StackGeometry(
        ordered,
        frame,
        positions[0].copy(),
        spacing,
        heights,
        offsets,
        tilt_degrees=tilt,
        irregular=irregular,
        spacing_assumed=spacing_assumed,
        problems=problems,
        notes=notes,
    )


def split_at_gaps(slices: list[SliceHeader], normal: np.ndarray) -> list[list[SliceHeader]]:
    """Split a sorted stack where a gap exceeds GAP_SPLIT_FACTOR typical spacings."""
    if len(slices) < 3:
        return [slices]
    heights = np.array([float(s.position @ normal) for s in slices])
    gaps = np.diff(heights)
    positive = gaps[gaps >= POSITION_TOLERANCE_MM]
    if positive.size == 0:
        return [slices]
    typical = float(np.median(positive))
    parts: list[list[SliceHeader]] = [[slices[0]]]
    for header, gap in zip(slices[1:], gaps, strict=True):
        if gap > GAP_SPLIT_FACTOR * typical:
            parts.append([])
        parts[-1].append(header)
    return parts
