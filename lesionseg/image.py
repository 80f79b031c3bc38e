"""The engine's one image type.

Geometry convention, stated once for the whole engine
-----------------------------------------------------
* World coordinates are **LPS** millimetres (DICOM and ITK's patient space: +x to the
  patient's left, +y posterior, +z superior).  Slicer's RAS is converted at the MRML
  bridge, NIfTI's RAS at the NIfTI reader and writer, both with :data:`RAS_FROM_LPS`; nowhere else.
* ``array`` is indexed ``array[k, j, i]``: the slowest axis is the third image axis.
  This is the order of ``SimpleITK.GetArrayFromImage`` and ``slicer.util.arrayFromVolume``.
* ``spacing``, ``origin`` and the columns of ``direction`` are in ``(i, j, k)`` order.
  ``direction[:, a]`` is the unit LPS vector along image axis ``a``.
* The world position of voxel centre ``(i, j, k)`` is
  ``origin + direction @ (spacing * (i, j, k))``; ``origin`` is the centre of voxel 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

ORTHONORMAL_TOLERANCE = 1e-4
# Two positions read from DICOM (ImagePositionPatient, or one recomputed from origin + k * spacing) are one
# point when they differ by less than this.  A DS value holds at most 16 characters, so the stored number is
# exact to ~1e-10 mm, but scanners and converters round the positions they write to 1e-3..1e-2 mm, and a
# position recomputed from a rounded spacing drifts by as much along a stack.  Slice-position comparisons
# (duplicate slices, regular gaps, in-plane drift) must accept that rounding, yet stay far below any voxel:
# 0.01 mm is a twentieth of the finest clinical voxel (0.2 mm), so no real slice gap or shift is hidden.
POSITION_TOLERANCE_MM = 1e-2
# Two grids the engine holds are one grid when spacing, origin and far corner agree this well.  Tighter than
# POSITION_TOLERANCE_MM because both sides come from the same numbers (or float32 NIfTI affines, ~1e-4 mm),
# never from two independently rounded DICOM headers.
GRID_TOLERANCE_MM = 1e-3

# The one LPS <-> RAS conversion of the engine, for 4x4 index-to-world matrices: RAS negates LPS's x and y.
# It is its own inverse, so ``RAS_FROM_LPS @ lps`` gives RAS and ``RAS_FROM_LPS @ ras`` gives LPS.
RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
RAS_FROM_LPS.setflags(write=False)  # shared by every caller: nobody may change it in place


def _as_vector(value: Iterable[float], name: str) -> np.ndarray:
    vec = np.asarray(value, dtype=np.float64).reshape(-1)
    if vec.shape != (3,):
        raise ValueError(f"{name} must have 3 values (i, j, k), got {vec.shape[0]}: {value!r}")
    if not np.all(np.isfinite(vec)):
        raise ValueError(f"{name} contains NaN or infinity: {vec.tolist()}; give finite values in mm")
    return vec


def check_direction(direction: Iterable[Iterable[float]] | np.ndarray) -> np.ndarray:
    """Return ``direction`` as a 3×3 float array, or raise if it is not orthonormal."""
    mat = np.asarray(direction, dtype=np.float64)
    if mat.size == 9:
        mat = mat.reshape(3, 3)
    if mat.shape != (3, 3):
        raise ValueError(f"direction must be a 3x3 matrix, got shape {mat.shape}")
    if not np.all(np.isfinite(mat)):
        raise ValueError("direction contains NaN or infinity")
    error = np.abs(mat.T @ mat - np.eye(3)).max()
    if error > ORTHONORMAL_TOLERANCE:
        raise ValueError(
            f"direction is not orthonormal (max |D^T D - I| = {error:.3g}); its columns must be unit "
            "vectors at right angles. Sheared or scaled grids are not supported: resample the image first."
        )
    return mat


@dataclass(eq=False)
class Image:
    """A 3D voxel array with its place in LPS space (see the module docstring)."""

    array: np.ndarray
    spacing: np.ndarray = field(default_factory=lambda: np.ones(3))
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim != 3:
            raise ValueError(
                f"an image must be a 3D array indexed [k, j, i], got {arr.ndim}D with shape {arr.shape}; "
                "add a length-1 axis for a single slice"
            )
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise ValueError(f"unsupported voxel type {arr.dtype}; use an integer or floating type")
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            bad = int(np.count_nonzero(~np.isfinite(arr)))
            raise ValueError(f"the voxel array holds {bad} NaN or infinite values; replace them before use")
        self.array = arr
        self.spacing = _as_vector(self.spacing, "spacing")
        if np.any(self.spacing <= 0):
            raise ValueError(f"spacing must be positive in every axis, got {self.spacing.tolist()} mm")
        self.origin = _as_vector(self.origin, "origin")
        self.direction = check_direction(self.direction)

    # -- geometry -----------------------------------------------------------------------------
    @property
    def size(self) -> tuple[int, int, int]:
        """Number of voxels along (i, j, k)."""
        k, j, i = self.array.shape
        return (i, j, k)

    @property
    def index_to_world(self) -> np.ndarray:
        """4×4 affine from (i, j, k, 1) to LPS (x, y, z, 1)."""
        mat = np.eye(4)
        mat[:3, :3] = self.direction * self.spacing[np.newaxis, :]
        mat[:3, 3] = self.origin
        return mat

    @property
    def world_to_index(self) -> np.ndarray:
        return np.linalg.inv(self.index_to_world)

    def world(self, ijk: np.ndarray | Iterable[float]) -> np.ndarray:
        """LPS positions of voxel indices; ``ijk`` is (..., 3) in (i, j, k) order."""
        pts = np.asarray(ijk, dtype=np.float64)
        return pts @ (self.direction * self.spacing).T + self.origin

    def index(self, lps: np.ndarray | Iterable[float]) -> np.ndarray:
        """Continuous (i, j, k) indices of LPS positions (…, 3)."""
        pts = np.asarray(lps, dtype=np.float64) - self.origin
        return (pts @ self.direction) / self.spacing

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def same_grid(self, other: "Image", tolerance_mm: float = GRID_TOLERANCE_MM) -> bool:
        """True when both images sample the same points in space."""
        return grid_mismatch(self, other, tolerance_mm) is None

    def with_array(self, array: np.ndarray) -> "Image":
        """A new image on this grid with other voxels."""
        if np.shape(array) != self.array.shape:
            raise ValueError(f"array shape {np.shape(array)} does not match the grid {self.array.shape}")
        return Image(array, self.spacing.copy(), self.origin.copy(), self.direction.copy())

    def copy(self) -> "Image":
        return self.with_array(self.array.copy())

    def __repr__(self) -> str:
        return (
            f"Image(size={self.size}, dtype={self.array.dtype}, spacing={np.round(self.spacing, 4).tolist()}, "
            f"origin={np.round(self.origin, 3).tolist()})"
        )


def grid_mismatch(a: Image, b: Image, tolerance_mm: float = GRID_TOLERANCE_MM) -> str | None:
    """Describe how two grids differ, or return None when they match."""
    if a.size != b.size:
        return f"size {a.size} vs {b.size}"
    if np.abs(a.spacing - b.spacing).max() > tolerance_mm:
        return f"spacing {a.spacing.round(4).tolist()} vs {b.spacing.round(4).tolist()} mm"
    if np.abs(a.origin - b.origin).max() > tolerance_mm:
        return f"origin {a.origin.round(3).tolist()} vs {b.origin.round(3).tolist()} mm"
    # Compare the far corner too, so small direction differences on big grids are caught in mm.
    corner = np.array(a.size, dtype=float) - 1
    if np.abs(a.world(corner) - b.world(corner)).max() > tolerance_mm or (
        np.abs(a.direction - b.direction).max() > ORTHONORMAL_TOLERANCE
    ):
        return "direction differs"
    return None


def require_same_grid(label: Image, reference: Image, what: str = "labelmap") -> None:
    """Raise ValueError when ``label`` does not lie on ``reference``'s grid."""
    problem = grid_mismatch(label, reference)
    if problem is not None:
        raise ValueError(
            f"the {what} does not lie on the reference image's grid ({problem}); "
            "resample it onto the reference first (lesionseg.resample.resample_to, nearest neighbour)"
        )
