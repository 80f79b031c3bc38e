"""SimpleITK images to and from :class:`lesionseg.image.Image` (both are LPS, array [k, j, i])."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from lesionseg.image import Image


def from_sitk(image: sitk.Image) -> Image:
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, got {image.GetDimension()}D; a 2D slice must be stored as 3D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"expected one value per voxel, got {image.GetNumberOfComponentsPerPixel()} components; "
            "split vector or RGB images into channels first"
        )
    return Image(
        sitk.GetArrayFromImage(image),
        spacing=image.GetSpacing(),
        origin=image.GetOrigin(),
        direction=np.array(image.GetDirection()).reshape(3, 3),
    )


def to_sitk(image: Image) -> sitk.Image:
    out = sitk.GetImageFromArray(np.ascontiguousarray(image.array), isVector=False)
    out.SetSpacing([float(v) for v in image.spacing])
    out.SetOrigin([float(v) for v in image.origin])
    out.SetDirection([float(v) for v in image.direction.reshape(-1)])
    return out
