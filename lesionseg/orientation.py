"""Orientation codes and axis-aligned reorientation of images, in the engine's LPS convention.

A code such as ``"LPS"`` names, for each of the axes i, j, k, the patient direction it points
towards (ITK's and DICOM's reading; Slicer's and NIfTI's ``RAS`` code would say ``LPS`` for the same grid).
"""

from __future__ import annotations

import numpy as np

from lesionseg.image import Image

_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))  # (positive, negative) along LPS x, y, z


def orientation_code(direction: np.ndarray) -> str:
    """Nearest axis-aligned code for a direction matrix (oblique grids snap to their closest axes)."""
    code = ""
    used: set[int] = set()
    for column in np.asarray(direction).T:
        order = [int(a) for a in np.argsort(-np.abs(column)) if int(a) not in used]
        axis = order[0]
        used.add(axis)
        code += _AXIS_LETTERS[axis][0 if column[axis] > 0 else 1]
    return code


def _code_matrix(code: str) -> np.ndarray:
    code = code.upper()
    if len(code) != 3:
        raise ValueError(f"an orientation code has 3 letters, got {code!r}")
    matrix = np.zeros((3, 3))
    seen = set()
    for column, letter in enumerate(code):
        for axis, (pos, neg) in enumerate(_AXIS_LETTERS):
            if letter in (pos, neg):
                if axis in seen:
                    raise ValueError(f"orientation code {code!r} names one axis twice")
                seen.add(axis)
                matrix[axis, column] = 1.0 if letter == pos else -1.0
                break
        else:
            raise ValueError(f"orientation code {code!r} has an unknown letter {letter!r}; use L/R, P/A, S/I")
    return matrix


def reorient(image: Image, code: str) -> Image:
    """The same voxels, re-indexed so that the axes point as ``code`` says; no interpolation.

    Physical positions are unchanged: voxel centres map to voxel centres. An oblique grid keeps its
    obliquity and is brought to the axis-aligned code nearest to it.
    """
    target = _code_matrix(code)
    current = _code_matrix(orientation_code(image.direction))
    # new axis n comes from old axis perm[n], flipped when the signs disagree
    perm = [int(np.argmax(np.abs(current.T @ target[:, n]))) for n in range(3)]
    flips = [float(current[:, perm[n]] @ target[:, n]) < 0 for n in range(3)]
    return permute_axes(image, perm, flips)


def permute_axes(image: Image, source_axis: list[int], flip: list[bool]) -> Image:
    """New axis ``n`` is old axis ``source_axis[n]``, reversed where ``flip[n]``; voxel centres stay put.

    The engine's one re-indexer: :func:`reorient` and the MONAI-exact reorientation of
    :mod:`lesionseg.inference.axes` both end here.
    """
    array_axes = [2 - source_axis[2 - a] for a in range(3)]  # arrays are [k, j, i]
    array = np.transpose(image.array, array_axes)
    for n in range(3):
        if flip[n]:
            array = np.flip(array, axis=2 - n)
    direction = image.direction[:, source_axis] * np.where(flip, -1.0, 1.0)
    # The new origin is the old voxel that becomes index 0: the far end of every reversed axis.
    old_sizes = np.array(image.size, dtype=float)
    first = np.zeros(3)
    for n in range(3):
        first[source_axis[n]] = old_sizes[source_axis[n]] - 1 if flip[n] else 0.0
    return Image(np.ascontiguousarray(array), image.spacing[source_axis], image.world(first), direction)
