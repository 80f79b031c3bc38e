"""Multi-channel input (CT + PET, T1 + FLAIR...): which file is which channel, and every channel on one grid.

A model that needs several images names them in order (nnU-Net's ``dataset.json`` ``channel_names``, LesionSeg's
spec ``inputs``).  The first channel's grid is the model's grid and the output's: every further channel is resampled
onto it, linearly (:func:`lesionseg.resample.resample_to`).  This is only right when the images share one patient
coordinate system, so DICOM series must share a FrameOfReferenceUID; and a channel that does not overlap the first at
all would be fed as zeros everywhere, so it is refused.

Intensities of a multi-channel LesionSeg model (:func:`channel_intensity`): the spec's (or training config's)
``preprocessing.intensity`` is the first channel's.  A ``range`` intensity is a fixed window in that channel's units
(a HU window for CT), which means nothing for another modality (a CT window clips a PET's SUVs to nothing), so every
further channel is z-scored over its own volume instead, as nnU-Net normalizes a non-CT channel.  A ``zscore``
intensity applies to every channel, each over its own volume.  Put the channel the window is for (CT) first.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lesionseg.errors import UserError
from lesionseg.image import Image

# DICOM Modality codes of common channel names, for a trained spec's ``inputs``; other names state none (any).
CHANNEL_MODALITIES = {"CT": "CT", "PET": "PT", "PT": "PT", "MR": "MR", "MRI": "MR"}
FURTHER_CHANNEL_INTENSITY: dict[str, Any] = {"kind": "zscore", "nonzero": False}


def channel_intensity(intensity: Mapping[str, Any], channel: int) -> dict[str, Any]:
    """The intensity scaling of input ``channel`` given the model's ``intensity`` (see the module docstring)."""
    if channel == 0 or intensity["kind"] != "range":
        return dict(intensity)
    return dict(FURTHER_CHANNEL_INTENSITY)


def window_channels(volume: Any, windows: Sequence[Sequence[float]]) -> Any:
    """One CT volume (a torch tensor of HU) as one channel per ``(low, high)`` window, each mapped to 0..1 and
    clipped: ``[len(windows), *volume.shape]``.  Training (``ChannelIntensityd``) and inference (the pipeline's
    channel scaling) both call this, so a model sees the same windows in both."""
    import torch

    volume = torch.as_tensor(volume, dtype=torch.float32)
    return torch.stack([((volume - lo) / (hi - lo)).clamp(0.0, 1.0) for lo, hi in windows])


def channel_modality(name: str) -> str | None:
    """The DICOM Modality a channel of this name holds (PET → PT), or None when the name does not say."""
    return CHANNEL_MODALITIES.get(name.strip().upper())


class ChannelError(UserError):
    """Input channels that do not fit the model or each other; the message names the channel and the fix."""


@dataclass
class ChannelInput:
    """One channel's image and what its source says about it."""

    name: str
    path: str
    image: Image
    modality: str | None = None  # DICOM Modality; None for files that do not record one
    frame_of_reference: str | None = None  # DICOM FrameOfReferenceUID; None for files


def assign_channels(
    channel_names: Sequence[str],
    inputs: Sequence[str] = (),
    named: Sequence[str] = (),
    owner: str = "this model",
    option: str = "--input",
) -> list[tuple[str, str]]:
    """(channel name, path) in the model's channel order, from ``--input`` (in order) or ``--channel NAME=PATH``.

    A missing channel is refused naming it, and so is an input the model has no channel for.  ``owner`` and
    ``option`` word the messages for another caller (``dataset add`` takes ``--image`` for "this dataset").
    """
    names = list(channel_names)
    if inputs and named:
        raise ChannelError(f"give the channels either as {option} in order or as --channel NAME=PATH, not both")
    if named:
        given: dict[str, str] = {}
        lookup = {n.casefold(): n for n in names}
        for item in named:
            key, sep, path = item.partition("=")
            if not sep or not key.strip() or not path:
                raise ChannelError(f"--channel {item!r}: write it as NAME=PATH, e.g. --channel {names[0]}=ct.nii.gz")
            name = lookup.get(key.strip().casefold())
            if name is None:
                owner_name = owner.replace("this ", "the ", 1)
                raise ChannelError(
                    f"--channel {key.strip()!r}: {owner_name} has no such channel; its channels are {', '.join(names)}"
                )
            if name in given:
                raise ChannelError(f"channel {name!r} is given twice")
            given[name] = path
        missing = [n for n in names if n not in given]
        if missing:
            raise ChannelError(
                f"channel(s) {', '.join(missing)} missing: {owner} needs {len(names)} images "
                f"({', '.join(names)}); add --channel {missing[0]}=PATH"
            )
        return [(n, given[n]) for n in names]
    if len(inputs) < len(names):
        missing = names[len(inputs) :]
        raise ChannelError(
            f"channel(s) {', '.join(missing)} missing: {owner} needs {len(names)} images in the order "
            f"{', '.join(names)}; give {option} once per channel, or --channel NAME=PATH"
        )
    if len(inputs) > len(names):
        raise ChannelError(
            f"{len(inputs)} inputs given but {owner} takes {len(names)} ({', '.join(names)}); "
            f"remove the extra input(s): {', '.join(str(p) for p in inputs[len(names) :])}"
        )
    return [(n, str(p)) for n, p in zip(names, inputs, strict=True)]


def read_channel(name: str, path: str | os.PathLike) -> ChannelInput:
    """Read one channel's image file or DICOM series folder, keeping its Modality and FrameOfReferenceUID."""
    path = Path(path)
    if path.is_dir():
        from lesionseg.dicom import read_dicom_series

        volume = read_dicom_series(path)
        first = volume.series.first
        return ChannelInput(
            name,
            str(path),
            volume.image,
            first.text("Modality") or None,
            first.text("FrameOfReferenceUID") or None,
        )
    from lesionseg.inference.validity import read_model_input

    source = read_model_input(path)
    return ChannelInput(name, str(path), source.image, source.modality)


def check_channel_modalities(spec: Any, channels: Sequence[ChannelInput]) -> None:
    """Refuse a further channel whose DICOM Modality is not the one ``spec`` (a ModelSpec) names for it: most
    often two series given in the wrong order.  The first channel is checked with ``--allow-modality``."""
    for index, channel in enumerate(channels[1:], start=1):
        expected = spec.expected_modality(index)
        actual = (channel.modality or "").strip().upper()
        if expected and actual and actual != expected:
            raise ChannelError(
                f"channel {channel.name!r} ({channel.path}) is a {actual} series, but model {spec.id!r} takes "
                f"{expected} there; give the channels in the order {', '.join(spec.channel_names)}"
            )


def _corners(image: Image) -> np.ndarray:
    """The LPS corners of the region the voxels cover (half a voxel beyond the centres)."""
    size = np.array(image.size, dtype=float)
    lo, hi = -0.5 * np.ones(3), size - 0.5
    grid = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    return image.world(grid)


def overlap_fraction(moving: Image, reference: Image) -> float:
    """Fraction of ``reference``'s voxel centres that ``moving`` covers (0 when their extents do not overlap)."""
    from lesionseg.resample import resample_to

    # The resampler itself decides what is inside, so this agrees exactly with what align_channels feeds.
    covered = resample_to(moving.with_array(np.ones(moving.array.shape, np.uint8)), reference, "nearest", default=0)
    return float(np.count_nonzero(covered.array)) / covered.array.size


def align_channels(channels: Sequence[ChannelInput]) -> list[Image]:
    """Every channel's image on the first channel's grid: further channels resampled linearly, outside set to 0.

    Refused: DICOM channels whose FrameOfReferenceUID differs from the first's, and a channel whose physical
    extent does not overlap the first's.
    """
    from lesionseg.resample import resample_to

    if not channels:
        raise ChannelError("no input image given")
    first = channels[0]
    out = [first.image]
    for channel in channels[1:]:
        if (
            first.frame_of_reference
            and channel.frame_of_reference
            and (first.frame_of_reference != channel.frame_of_reference)
        ):
            raise ChannelError(
                f"channel {channel.name!r} ({channel.path}) is in another frame of reference than channel "
                f"{first.name!r} ({first.path}): FrameOfReferenceUID {channel.frame_of_reference} vs "
                f"{first.frame_of_reference}. The images are not in one patient coordinate system; register "
                "them first, or give the series acquired together (e.g. the PET and CT of one PET/CT study)"
            )
        if overlap_fraction(channel.image, first.image) == 0.0:
            lo_a, hi_a = _corners(first.image).min(0), _corners(first.image).max(0)
            lo_b, hi_b = _corners(channel.image).min(0), _corners(channel.image).max(0)
            raise ChannelError(
                f"channel {channel.name!r} ({channel.path}) does not overlap channel {first.name!r} ({first.path}) "
                f"in space: it covers LPS {np.round(lo_b, 1).tolist()} to {np.round(hi_b, 1).tolist()} mm, the "
                f"{first.name} {np.round(lo_a, 1).tolist()} to {np.round(hi_a, 1).tolist()} mm. Give images of "
                "the same patient and study, in one coordinate system"
            )
        moving = channel.image
        if not np.issubdtype(moving.array.dtype, np.floating):
            moving = moving.with_array(moving.array.astype(np.float32))  # linear interpolation must not truncate
        out.append(resample_to(moving, first.image, "linear", default=0.0))
    return out
