"""Input a model cannot give a true answer on: refused (or flagged) before any inference.

A network always returns a labelmap, whatever it is fed.  An MR series run through a CT model, a single
slice run through a 3D model, or a CT whose voxels are not Hounsfield units gives a result that looks like
any other.  These checks run once, at the entry of :func:`lesionseg.inference.pipeline.segment_image`, and
either raise ValueError (the input cannot be right) or return warnings (it looks wrong, the user decides).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lesionseg.image import Image
from lesionseg.models.spec import ModelSpec

# A 3D network needs depth along every axis: one voxel along any axis is a 2D image or a single slice.
MIN_VOXELS_PER_AXIS = 2
# What "the volume cannot hold the model's window" means.  A volume smaller than one window is legitimate:
# sliding-window inference pads it, and a 20-slice CT on a 96-slice window is still segmented well where it
# has data.  A volume whose extent along an axis is below this fraction of the window's extent is degenerate
# (a slab of a few slices, or a spacing such as 1e-6 mm that squeezes it to one resampled voxel): the network
# would see padding almost everywhere, and its empty or random answer would pass for a result.
MIN_WINDOW_FRACTION = 0.125
# Every CT holding air or fat has voxels below this, in HU (air -1000, fat about -100).  An image without
# any is stored values without their rescale, an 8-bit export, or another modality.
CT_LOWEST_EXPECTED_HU = -200.0
_AXIS_NAMES = ("i (columns)", "j (rows)", "k (slices)")


@dataclass
class ModelInput:
    """An image to segment and what its source says it is."""

    image: Image
    modality: str | None = None  # the DICOM Modality of the series; None for files that do not record one


def read_model_input(path: str | os.PathLike) -> ModelInput:
    """Read an image file or a DICOM series folder, keeping the series' Modality for the checks."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such image: {path}")
    if path.is_dir():
        from lesionseg.dicom import read_dicom_series

        volume = read_dicom_series(path)
        modality = volume.series.first.text("Modality") or None
        return ModelInput(volume.image, modality)
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        # Reading a named pipe blocks until a writer appears; a device may never end.
        raise ValueError(f"{path} is not a regular file (a pipe or a device); give an image file or a DICOM folder")
    from lesionseg.io import read_image

    return ModelInput(read_image(path))


def check_model_input(
    image: Image,
    spec: ModelSpec,
    modality: str | None = None,
    allow_modality: str | None = None,
    window_specs: tuple[ModelSpec, ...] = (),
) -> list[str]:
    """Raise ValueError for input ``spec``'s model cannot be right on; return warnings for input that looks wrong.

    ``modality`` is the input's DICOM Modality when known; ``allow_modality`` is the one the user accepts
    in place of the spec's.  ``window_specs`` are further stages (a cascade's coarse model) whose windows
    must fit too.
    """
    warnings = check_modality(spec, modality, allow_modality)
    for each in (spec, *window_specs):
        check_extent(image, each)
    return warnings + intensity_warnings(image, spec, modality)


def check_modality(spec: ModelSpec, modality: str | None, allow_modality: str | None = None) -> list[str]:
    """Refuse a DICOM series whose Modality is not the model's, unless the user allowed that modality."""
    expected = spec.expected_modality(0)
    if expected is None or modality is None:
        return []
    actual = modality.strip().upper()
    if actual == expected:
        return []
    allowed = (allow_modality or "").strip().upper()
    if actual == allowed:
        return [
            f"model {spec.id!r} was trained on {expected} but runs on this {actual} series because "
            f"--allow-modality {actual} was given; its result is not validated for {actual}"
        ]
    raise ValueError(
        f"model {spec.id!r} segments {expected} images, but this DICOM series is {actual} (Modality tag); "
        f"its result would mean nothing. Give a {expected} series, or pass --allow-modality {actual} to run it anyway"
    )


def check_extent(image: Image, spec: ModelSpec) -> None:
    """Refuse a volume whose extent along an axis is degenerate for the model's window (see MIN_WINDOW_FRACTION)."""
    from lesionseg.inference.axes import monai_reorientation

    size = np.asarray(image.size)
    spacing = np.asarray(image.spacing, dtype=float)
    extent = size * spacing
    thin = [a for a in range(3) if size[a] < MIN_VOXELS_PER_AXIS]
    if thin:
        shape = "x".join(str(int(v)) for v in size)
        raise ValueError(
            f"the image is {shape} voxels: a single voxel along {_AXIS_NAMES[thin[0]]} (a 2D image or a single "
            f"slice), but model {spec.id!r} is a 3D network; give a volume of at least {MIN_VOXELS_PER_AXIS} voxels "
            "along every axis, and best the whole scan"
        )
    source_axis, _ = monai_reorientation(image, spec.preprocessing.orientation)
    target = spec.preprocessing.spacing
    for n in range(3):
        axis = source_axis[n]
        window_spacing = float(target[n]) if target is not None else float(spacing[axis])
        window_mm = spec.inference.roi_size[n] * window_spacing
        needed_mm = MIN_WINDOW_FRACTION * window_mm
        if extent[axis] < needed_mm:
            raise ValueError(
                f"the image spans {extent[axis]:.3g} mm along {_AXIS_NAMES[axis]} ({int(size[axis])} voxels of "
                f"{spacing[axis]:.3g} mm), but model {spec.id!r} looks through windows of {spec.inference.roi_size[n]} "
                f"x {window_spacing:g} mm = {window_mm:g} mm and needs at least {needed_mm:g} mm of image along it; "
                "check the file's voxel spacing, or give the whole scan instead of a few slices"
            )


def intensity_warnings(image: Image, spec: ModelSpec, modality: str | None = None) -> list[str]:
    """Warn when a CT model gets voxels that cannot be Hounsfield units."""
    if spec.expected_modality(0) != "CT" or (modality is not None and modality.strip().upper() != "CT"):
        return []  # another modality was refused or explicitly allowed; its values are not HU anyway
    values = image.array
    if values.size == 0:
        return []
    low, high = float(values.min()), float(values.max())
    if low >= CT_LOWEST_EXPECTED_HU:
        return [
            f"model {spec.id!r} expects CT in Hounsfield units, but no voxel of this image is below "
            f"{CT_LOWEST_EXPECTED_HU:g} (values {low:g} to {high:g}, {values.dtype}; air is -1000 HU): it looks "
            "like another modality, an 8-bit export or stored values without their rescale, and the result is "
            "not to be trusted"
        ]
    return []
