"""Writing a labelmap: NIfTI, NRRD, or Slicer's segmentation NRRD (``.seg.nrrd``) with named, coloured segments."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from lesionseg.image import Image
from lesionseg.io import write_image
from lesionseg.io.segnrrd import write_seg_nrrd
from lesionseg.labels import LabelInfo

LABELMAP_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd")


def labelmap_format(path: str | Path) -> str:
    name = Path(path).name.lower()
    for suffix in LABELMAP_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise ValueError(f"cannot write a labelmap to {Path(path).name!r}; end the name with .nii.gz, .nrrd or .seg.nrrd")


def write_labelmap(labelmap: Image, labels: Iterable[LabelInfo], path: str | Path) -> Path:
    """Write atomically; the name's extension picks NIfTI, NRRD or segmentation NRRD."""
    path = Path(path)
    fmt = labelmap_format(path)
    if not np.issubdtype(labelmap.array.dtype, np.integer):
        raise ValueError(f"a labelmap must hold integers, got {labelmap.array.dtype}")
    if fmt != ".seg.nrrd":
        return write_image(labelmap, path)
    return write_seg_nrrd(labelmap, labels, path)


def write_result_labelmap(
    labelmap: Image, labels: Iterable[LabelInfo], path: str | Path, reporter: Any
) -> tuple[Path, list[dict[str, Any]]]:
    """The ``write`` stage of a segmentation run: the labelmap written atomically, then each label of the model as
    the result event lists it (``present``: whether any voxel has it)."""
    labels = list(labels)
    reporter.stage("write")
    written = write_labelmap(labelmap, labels, path)
    reporter.finish()
    present = {int(v) for v in np.unique(labelmap.array) if v}
    return written, [dict(label.to_dict(), present=label.value in present) for label in labels]
