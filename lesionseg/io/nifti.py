"""NIfTI files through nibabel.  NIfTI's affine maps (i, j, k) to RAS; we flip x and y to LPS here."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from lesionseg.image import RAS_FROM_LPS, Image


def read_nifti(path: str | Path) -> Image:
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., np.newaxis]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume, got shape {data.shape}")
    affine = RAS_FROM_LPS @ img.affine  # the flip is its own inverse
    linear = affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing == 0):
        raise ValueError(f"{path}: the NIfTI affine has a zero-length axis; the header is broken")
    return Image(
        np.ascontiguousarray(np.transpose(data, (2, 1, 0))),
        spacing=spacing,
        origin=affine[:3, 3],
        direction=linear / spacing,
    )


def write_nifti(image: Image, path: str | Path) -> None:
    affine = RAS_FROM_LPS @ image.index_to_world
    data = np.transpose(image.array, (2, 1, 0))
    out = nib.Nifti1Image(data, affine)
    out.header.set_data_dtype(image.array.dtype)
    # Keep both forms so readers that prefer either agree; code 1 = scanner anatomical.
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    out.header.set_xyzt_units("mm")
    nib.save(out, str(path))
