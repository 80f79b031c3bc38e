"""Building an :class:`~lesionseg.image.Image` in HU from a DICOM series."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from scipy import ndimage

from lesionseg.dicom.headers import SliceHeader
from lesionseg.dicom.series import Scan, Series, scan_folder
from lesionseg.image import Image

log = logging.getLogger(__name__)

Policy = Literal["correct", "error"]


@dataclass
class Volume:
    """A built image with the series it came from and every correction made on the way."""

    image: Image
    series: Series
    warnings: list[str] = field(default_factory=list)


def _decode(header: SliceHeader) -> tuple[np.ndarray, float, float]:
    """Stored pixel values of one file with its own rescale slope and intercept."""
    path = header.path
    try:
        dataset = pydicom.dcmread(path)
        stored = dataset.pixel_array
    except Exception as error:  # noqa: BLE001 - any decoder failure becomes one message naming the file
        raise ValueError(
            f"cannot decode the pixels of {path} (transfer syntax {header.transfer_syntax}): "
            f"{type(error).__name__}: {error}. The file may be truncated or damaged; for compressed files "
            "install pylibjpeg, pylibjpeg-openjpeg, pyjpegls or python-gdcm (pip install 'lesionseg[dicom]')"
        ) from error
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    if stored.shape != (rows, columns):
        raise ValueError(
            f"{path}: decoded pixels have shape {stored.shape}, expected one {rows}x{columns} greyscale frame"
        )
    if "ModalityLUTSequence" in dataset and "RescaleSlope" not in dataset:
        raise ValueError(f"{path}: a Modality LUT instead of RescaleSlope/RescaleIntercept is not supported")
    slope = float(dataset.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(dataset.get("RescaleIntercept", 0.0) or 0.0)
    return stored, slope, intercept


def _to_hu(stored: list[np.ndarray], slopes: np.ndarray, intercepts: np.ndarray) -> np.ndarray:
    """Apply each slice's own rescale; keep integers when every slope and intercept is integral."""
    integral = np.all(slopes == np.round(slopes)) and np.all(intercepts == np.round(intercepts))
    if integral:
        out = np.empty((len(stored), *stored[0].shape), dtype=np.int64)
        for k, (values, slope, intercept) in enumerate(zip(stored, slopes, intercepts, strict=True)):
            out[k] = values.astype(np.int64) * int(slope) + int(intercept)
        lo, hi = out.min(), out.max()
        for dtype in (np.int16, np.int32):
            if np.iinfo(dtype).min <= lo and hi <= np.iinfo(dtype).max:
                return out.astype(dtype)
        return out
    out = np.empty((len(stored), *stored[0].shape), dtype=np.float32)
    for k, (values, slope, intercept) in enumerate(zip(stored, slopes, intercepts, strict=True)):
        out[k] = values.astype(np.float64) * slope + intercept
    return out


def _untilt(hu: np.ndarray, offsets: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Shift each slice in-plane so that it lies straight above the first (gantry tilt)."""
    fill = float(hu.min())
    out = np.empty(hu.shape, dtype=np.float32)
    for k in range(hu.shape[0]):
        # Output voxel (i, j) of slice k lies at (i - a/si, j - b/sj) of the acquired slice, where
        # (a, b) is the slice's sideways offset in mm; ndimage.shift(x, s) samples x at (index - s).
        shift = (offsets[k, 1] / spacing[1], offsets[k, 0] / spacing[0])
        out[k] = ndimage.shift(hu[k].astype(np.float32), shift, order=1, mode="constant", cval=fill)
    return out


def _regular_heights(hu: np.ndarray, heights: np.ndarray, count: int, dz: float) -> np.ndarray:
    """Linear interpolation along the normal onto ``count`` slices ``dz`` apart."""
    targets = np.arange(count) * dz
    upper = np.clip(np.searchsorted(heights, targets, side="right"), 1, len(heights) - 1)
    lower = upper - 1
    weight = ((targets - heights[lower]) / (heights[upper] - heights[lower])).astype(np.float32)
    weight = np.clip(weight, 0.0, 1.0)[:, None, None]
    source = hu.astype(np.float32)
    return source[lower] * (1 - weight) + source[upper] * weight


def load_series(
    series: Series,
    *,
    irregular: Policy = "correct",
    tilt: Policy = "correct",
    log_warnings: bool = True,
    assume_pixel_spacing: bool = False,
) -> Volume:
    """Build the volume of one series (see :mod:`lesionseg.dicom.geometry` for the rules).

    ``irregular="correct"`` resamples non-uniform or gapped stacks onto a regular grid and
    ``tilt="correct"`` shifts tilted slices onto an orthogonal grid, each with a warning;
    ``"error"`` refuses such series instead.  Voxels are HU from each slice's own rescale:
    int16 (or int32) when every slope and intercept is an integer and nothing was interpolated,
    float32 otherwise.  A series without a usable PixelSpacing is refused: its scale is unknown, and a
    model or a measurement would work at the wrong one.  Only conversion passes ``assume_pixel_spacing``
    (1 mm pixels, with a loud warning in the result).
    """
    geometry = series.geometry
    if geometry is None:
        raise ValueError(
            f"series {series.key} holds no image slices to build a volume from ({'; '.join(series.notes)})"
        )
    if geometry.problems:
        raise ValueError(f"series {series.key} cannot be built into a volume: {'; '.join(geometry.problems)}")
    if geometry.spacing_assumed and not assume_pixel_spacing:
        raise ValueError(
            f"series {series.key}: {geometry.spacing_assumed}, so the size of its pixels is unknown and it would be "
            "segmented at the wrong scale; fix PixelSpacing in the files, or convert them with `lesionseg dicom "
            "convert` (which assumes 1 mm pixels and says so) and set the true spacing in the converted file"
        )
    if geometry.tilted and tilt == "error":
        raise ValueError(
            f"series {series.key} was acquired with a gantry tilt of {geometry.tilt_degrees:.2f}°; "
            "its slices do not form a rectangular grid. Load it with tilt correction, or reconstruct it without tilt"
        )
    if geometry.irregular and irregular == "error":
        raise ValueError(
            f"series {series.key} has irregular slice positions ({'; '.join(geometry.notes)}); "
            "load it with resampling allowed, or check the export for missing files"
        )
    stored, slopes, intercepts = [], [], []
    for header in geometry.slices:
        values, slope, intercept = _decode(header)
        stored.append(values)
        slopes.append(slope)
        intercepts.append(intercept)
    hu = _to_hu(stored, np.array(slopes), np.array(intercepts))
    warnings = list(series.warnings)
    if len(set(slopes)) > 1 or len(set(intercepts)) > 1:
        warnings.append("RescaleSlope/RescaleIntercept vary between slices: each slice rescaled with its own")
    if geometry.tilted:
        hu = _untilt(hu, geometry.in_plane_offsets, geometry.spacing)
    if geometry.irregular:
        hu = _regular_heights(hu, geometry.heights, geometry.slice_count, float(geometry.spacing[2]))
    image = Image(hu, geometry.spacing, geometry.origin, geometry.direction)
    if log_warnings:
        for message in warnings:
            log.warning("%s: %s", series.key, message)
    return Volume(image, series, warnings)


def describe_choices(scan: Scan) -> str:
    lines = []
    for s in scan.volumes():
        size = "x".join(str(v) for v in s.geometry.size)
        lines.append(f"  {s.key}  {s.modality} {len(s.slices)} slices {size}  {s.description!r}")
    return "\n".join(lines)


def select_series(scan: Scan, series_uid: str | None = None) -> Series:
    """The one volume series of ``scan``, or the one named by ``series_uid``; else a clear error."""
    if scan.unreadable:
        listing = "; ".join(f"{p} ({why})" for p, why in scan.unreadable[:5])
        raise ValueError(
            f"{len(scan.unreadable)} file(s) under {scan.folder} look like DICOM but cannot be read: {listing}. "
            "Remove or replace them: a series with a broken file would be incomplete"
        )
    candidates = scan.volumes()
    if series_uid is not None:
        candidates = [s for s in scan.find(series_uid) if s.geometry is not None]
        if not candidates:
            raise ValueError(
                f"no image series {series_uid!r} under {scan.folder}; the image series there are:\n"
                f"{describe_choices(scan)}"
            )
    if not candidates:
        others = ", ".join(sorted({s.modality for s in scan.series})) or "none"
        raise ValueError(f"no DICOM image series under {scan.folder} (DICOM objects found: {others})")
    if len(candidates) > 1:
        raise ValueError(
            f"{scan.folder} holds {len(candidates)} image series; pick one with --series UID "
            f"(series_uid=...), or convert them all with `lesionseg dicom convert` and pass the file:\n"
            f"{describe_choices(scan)}"
        )
    return candidates[0]


def read_dicom_series(
    folder: str | os.PathLike, series_uid: str | None = None, *, irregular: Policy = "correct", tilt: Policy = "correct"
) -> Volume:
    """Like :func:`read_dicom_volume`, also returning the series and the warnings."""
    scan = scan_folder(folder)
    return load_series(select_series(scan, series_uid), irregular=irregular, tilt=tilt)


def read_dicom_volume(
    folder: str | os.PathLike, series_uid: str | None = None, *, irregular: Policy = "correct", tilt: Policy = "correct"
) -> Image:
    """The image (HU, LPS) of the one DICOM image series under ``folder``.

    When the folder holds several series, pass ``series_uid`` (a SeriesInstanceUID, or
    ``UID#n`` for one part of a split series). Corrections are logged as warnings.
    """
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"no such DICOM folder: {folder}")
    return read_dicom_series(folder, series_uid, irregular=irregular, tilt=tilt).image
