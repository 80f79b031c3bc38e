"""Reorientation exactly as MONAI's ``Orientationd`` does it, including for oblique grids.

MONAI asks nibabel (``io_orientation``) which world axis each image axis is closest to.  For strongly oblique
grids that choice can differ from :func:`lesionseg.orientation.orientation_code` (about 8 % of random
rotations), and a different choice feeds the network a differently permuted volume.  So the pipeline takes
the permutation from nibabel, and applies it losslessly with the engine's one re-indexer,
:func:`lesionseg.orientation.permute_axes` (imported here for the pipeline).
"""

from __future__ import annotations

from lesionseg.image import RAS_FROM_LPS, Image
from lesionseg.orientation import permute_axes

__all__ = ["monai_reorientation", "permute_axes", "undo_permutation"]


def monai_reorientation(image: Image, axcodes: str) -> tuple[list[int], list[bool]]:
    """The (source_axis, flip) that MONAI's Orientationd(axcodes) applies to ``image``."""
    import nibabel as nib

    start = nib.orientations.io_orientation(RAS_FROM_LPS @ image.index_to_world)
    end = nib.orientations.axcodes2ornt(tuple(axcodes.upper()), labels=(("L", "R"), ("P", "A"), ("I", "S")))
    transform = nib.orientations.ornt_transform(start, end)  # per old axis: (new axis, ±1)
    source_axis = [0, 0, 0]
    flip = [False, False, False]
    for old, (new, sign) in enumerate(transform):
        source_axis[int(new)] = old
        flip[int(new)] = sign < 0
    return source_axis, flip


def undo_permutation(source_axis: list[int], flip: list[bool]) -> tuple[list[int], list[bool]]:
    """The permutation that takes an image permuted by (source_axis, flip) back to the original axes."""
    back = [0, 0, 0]
    back_flip = [False, False, False]
    for new, old in enumerate(source_axis):
        back[old] = new
        back_flip[old] = flip[new]
    return back, back_flip
