"""The grids every conversion is tested on, and the physical-point check they must pass."""

from __future__ import annotations

import itertools

import numpy as np

from lesionseg.image import Image


def rotation(axis: str, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return {
        "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]


def axis_aligned_directions() -> list[np.ndarray]:
    """All 48 signed permutation matrices: every axis-aligned orientation, proper or mirrored."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            mat = np.zeros((3, 3))
            for col, (row, sign) in enumerate(zip(perm, signs, strict=True)):
                mat[row, col] = sign
            out.append(mat)
    return out


def ramp(shape_kji: tuple[int, int, int], dtype=np.int16) -> np.ndarray:
    """Voxel values that differ everywhere, so any axis swap or flip changes the array."""
    k, j, i = np.indices(shape_kji)
    return ((i * 7 + j * 131 + k * 1009) % 30011 - 1024).astype(dtype)


NAMED_GEOMETRIES: dict[str, dict] = {
    "identity": dict(shape=(6, 7, 8), spacing=(1, 1, 1), origin=(0, 0, 0), direction=np.eye(3)),
    "lps_flipped": dict(
        shape=(6, 7, 8), spacing=(0.8, 0.8, 2.5), origin=(120.5, 95.25, -310.0), direction=np.diag([-1.0, -1.0, 1.0])
    ),
    "axis_permuted": dict(
        shape=(9, 5, 7),
        spacing=(1.2, 0.9, 3.0),
        origin=(-40.0, 12.5, 33.3),
        direction=np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
    ),
    "oblique_30_30": dict(
        shape=(5, 8, 6),
        spacing=(0.9, 1.1, 2.0),
        origin=(-12.3, 45.6, -78.9),
        direction=rotation("x", 30) @ rotation("y", 30),
    ),
    "anisotropic": dict(shape=(7, 9, 9), spacing=(0.7, 0.7, 5.0), origin=(-175.0, -160.3, 410.0), direction=np.eye(3)),
    "non_square_512x384": dict(
        shape=(3, 384, 512), spacing=(0.78, 0.78, 1.5), origin=(-200.0, -150.0, 0.0), direction=np.eye(3)
    ),
    "single_slice": dict(shape=(1, 16, 12), spacing=(0.5, 0.6, 3.0), origin=(1.0, 2.0, 3.0), direction=np.eye(3)),
}


def make_image(name: str, dtype=np.int16) -> Image:
    g = NAMED_GEOMETRIES[name]
    return Image(ramp(g["shape"], dtype), g["spacing"], g["origin"], g["direction"])


def sample_indices(image: Image) -> np.ndarray:
    """Corners and a few inner voxels (i, j, k)."""
    ni, nj, nk = image.size
    corners = np.array(list(itertools.product((0, ni - 1), (0, nj - 1), (0, nk - 1))), dtype=float)
    inner = np.array([[ni // 2, nj // 3, nk // 2], [ni // 3, nj // 2, max(nk - 2, 0)]], dtype=float)
    return np.vstack([corners, inner])


def assert_same_physical_image(a: Image, b: Image, tol_mm: float = 1e-4) -> None:
    """Each voxel of ``a`` sits at the same LPS point in ``b`` and holds the same value."""
    assert sorted(a.array.shape) == sorted(b.array.shape), (a, b)
    for ijk in sample_indices(a):
        world_a = a.world(ijk)
        ijk_b = b.index(world_a)
        np.testing.assert_allclose(ijk_b, np.round(ijk_b), atol=1e-3, err_msg="voxel centre moved off the grid")
        i, j, k = np.round(ijk_b).astype(int)
        np.testing.assert_allclose(b.world([i, j, k]), world_a, atol=tol_mm)
        ia, ja, ka = ijk.astype(int)
        assert a.array[ka, ja, ia] == b.array[k, j, i], f"value at voxel {ijk} changed"
    np.testing.assert_array_equal(np.sort(a.array, axis=None), np.sort(b.array, axis=None))
