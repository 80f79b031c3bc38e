"""Implicit solids in LPS millimetres, and their partial-volume rendering onto an axis-aligned grid.

Every solid has a *field* ``f(x, y, z)``: about the signed distance in mm to its surface, positive
inside.  A voxel belongs to a solid's label when ``f >= 0`` at its centre; its image value is
blended by the fraction of the voxel that the solid covers, estimated from ``f`` and its change from
voxel to voxel (``0.5 + f / w`` with ``w`` the sum of the absolute index-space derivatives, which is
the extent of a box voxel across a locally flat surface).  This gives slab partial volume for thick
slices without rendering sub-slices.

Fields take broadcastable coordinate arrays.  On a render block they are the grid's 1D axes shaped
``(1, 1, nx)``, ``(1, ny, 1)`` and ``(nz, 1, 1)``, so separable parts stay cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

FAR = 1.0e4  # field value of points nowhere near a solid
_CHUNK_VOXELS = 4_000_000  # render blocks in slabs of about this many voxels to bound memory


def _vec(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(3)


class Solid:
    """A region of space with a bounding box (``lo``, ``hi`` in mm) and a distance-like field."""

    lo: np.ndarray
    hi: np.ndarray

    def field(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def at(self, point: Sequence[float]) -> float:
        """The field at one LPS point."""
        p = _vec(point)
        if np.any(p < self.lo) or np.any(p > self.hi):
            return -FAR
        return float(np.asarray(self.field(*(np.array([v]) for v in p))).reshape(-1)[0])


@dataclass(eq=False)
class Ellipsoid(Solid):
    """An ellipsoid, optionally bent and with a low-frequency bumpy surface.

    ``rotation`` columns are the ellipsoid's axes in LPS.  ``bumps`` weigh the direction terms of
    ``_BUMP_TERMS`` (a relative change of radius); ``bend`` curves the first axis into a crescent.
    """

    centre: np.ndarray
    radii: np.ndarray
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    bumps: np.ndarray | None = None
    bend: float = 0.0
    taper: float = 0.0  # thins axes 2 and 3 towards the +axis-1 end (a liver's left lobe)

    def __post_init__(self) -> None:
        self.centre = _vec(self.centre)
        self.radii = _vec(self.radii)
        self.rotation = np.asarray(self.rotation, dtype=np.float64)
        self.bend, self.taper = float(self.bend), float(self.taper)
        growth = 1.0 + (0.0 if self.bumps is None else float(np.abs(self.bumps).sum())) + abs(self.bend)
        reach = np.abs(self.rotation) @ (self.radii * growth)
        self.lo = self.centre - reach
        self.hi = self.centre + reach

    def field(self, x, y, z):
        c = self.centre.tolist()  # Python floats keep float32 coordinates in float32
        d = (x - c[0], y - c[1], z - c[2])
        r = (self.rotation / self.radii[np.newaxis, :]).tolist()
        u = [r[0][a] * d[0] + r[1][a] * d[1] + r[2][a] * d[2] for a in range(3)]
        if self.taper:
            # shrink the cross-section as axis 1 grows: divide by a factor that falls to (1 - taper)
            thin = 1.0 - self.taper * np.clip(0.5 + 0.5 * u[0], 0.0, 1.0)
            u[1] = u[1] / thin
            u[2] = u[2] / thin
        if self.bend:
            u[0] = u[0] - self.bend * (u[1] * u[1] + u[2] * u[2])
        rho = np.sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2])
        limit = 1.0
        if self.bumps is not None:
            inv = 1.0 / np.maximum(rho, 1e-6)
            n = (u[0] * inv, u[1] * inv, u[2] * inv)
            limit = 1.0 + sum(w * term(n) for w, term in zip(self.bumps.tolist(), _BUMP_TERMS, strict=False))
        return (limit - rho) * float(self.radii.min())


# Smooth functions of the unit direction (x, y, z): first, second and third order, so a surface
# built from them bulges and dents at the scale of the whole organ, never as fine ripples.
_BUMP_TERMS: tuple[Callable, ...] = (
    lambda n: n[0],
    lambda n: n[1],
    lambda n: n[2],
    lambda n: n[0] * n[1],
    lambda n: n[1] * n[2],
    lambda n: n[0] * n[2],
    lambda n: n[0] * n[0] - n[1] * n[1],
    lambda n: 2.0 * n[2] * n[2] - n[0] * n[0] - n[1] * n[1],
    lambda n: n[0] * n[1] * n[2],
    lambda n: n[2] * (n[0] * n[0] - n[1] * n[1]),
)
N_BUMP_TERMS = len(_BUMP_TERMS)


@dataclass(eq=False)
class Capsule(Solid):
    """Points within a radius of a segment; the radius changes linearly from ``a`` to ``b``."""

    a: np.ndarray
    b: np.ndarray
    radius_a: float
    radius_b: float | None = None

    def __post_init__(self) -> None:
        self.a = _vec(self.a)
        self.b = _vec(self.b)
        if self.radius_b is None:
            self.radius_b = self.radius_a
        self.radius_a, self.radius_b = float(self.radius_a), float(self.radius_b)
        reach = max(self.radius_a, self.radius_b)
        self.lo = np.minimum(self.a, self.b) - reach
        self.hi = np.maximum(self.a, self.b) + reach
        self._axis = self.b - self.a
        self._length2 = max(float(self._axis @ self._axis), 1e-9)

    def field(self, x, y, z):
        a, axis = self.a.tolist(), self._axis.tolist()
        d = (x - a[0], y - a[1], z - a[2])
        t = np.clip((d[0] * axis[0] + d[1] * axis[1] + d[2] * axis[2]) * (1.0 / self._length2), 0.0, 1.0)
        e = [d[c] - t * axis[c] for c in range(3)]
        dist = np.sqrt(e[0] * e[0] + e[1] * e[1] + e[2] * e[2])
        return self.radius_a + t * (self.radius_b - self.radius_a) - dist


@dataclass(eq=False)
class Column(Solid):
    """An axial elliptic cylinder whose centre and semi-axes follow knots along z.

    ``shell`` > 0 keeps only a wall of that thickness around the ellipse; ``angles`` (radians,
    ``atan2`` of the normalised (y, x) offset) keep only a sector of it.
    """

    z: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    ax: np.ndarray
    ay: np.ndarray
    shell: float = 0.0
    angles: tuple[float, float] | None = None
    mirror_x: bool = False  # measure angles on the mirrored side, so left and right share one range

    def __post_init__(self) -> None:
        self.z = np.asarray(self.z, dtype=np.float64)
        n = len(self.z)
        self.cx, self.cy, self.ax, self.ay = (
            np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)).copy() for v in (self.cx, self.cy, self.ax, self.ay)
        )
        self.shell = float(self.shell)
        if self.angles is not None:
            self.angles = (float(self.angles[0]), float(self.angles[1]))
        if np.any(np.diff(self.z) <= 0):
            raise ValueError("column knots must rise along z")
        grow = self.shell / 2.0
        self.lo = np.array([(self.cx - self.ax).min() - grow, (self.cy - self.ay).min() - grow, self.z[0]])
        self.hi = np.array([(self.cx + self.ax).max() + grow, (self.cy + self.ay).max() + grow, self.z[-1]])

    def field(self, x, y, z):
        dtype = np.result_type(x, y, z)
        cx, cy, ax, ay = (np.interp(z, self.z, v).astype(dtype) for v in (self.cx, self.cy, self.ax, self.ay))
        u = (x - cx) / ax
        v = (y - cy) / ay
        rho = np.sqrt(u * u + v * v)
        scale = np.minimum(ax, ay)
        f = (1.0 - rho) * scale if not self.shell else self.shell / 2.0 - np.abs(rho - 1.0) * scale
        if self.angles is not None:
            theta = np.arctan2(v, -u if self.mirror_x else u)
            f = np.minimum(f, np.minimum(theta - self.angles[0], self.angles[1] - theta) * scale)
        return np.minimum(f, np.minimum(z - float(self.z[0]), float(self.z[-1]) - z))


@dataclass(eq=False)
class SphereCup(Solid):
    """A spherical shell cut by a plane: a hip socket.  Keeps points with ``normal·(p-c) >= -depth``."""

    centre: np.ndarray
    inner: float
    outer: float
    normal: np.ndarray
    depth: float

    def __post_init__(self) -> None:
        self.centre = _vec(self.centre)
        self.normal = _vec(self.normal) / np.linalg.norm(self.normal)
        self.inner, self.outer, self.depth = float(self.inner), float(self.outer), float(self.depth)
        self.lo = self.centre - self.outer
        self.hi = self.centre + self.outer

    def field(self, x, y, z):
        c, n = self.centre.tolist(), self.normal.tolist()
        d = (x - c[0], y - c[1], z - c[2])
        dist = np.sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2])
        side = d[0] * n[0] + d[1] * n[1] + d[2] * n[2] + float(self.depth)
        return np.minimum(np.minimum(self.outer - dist, dist - self.inner), side)


@dataclass(eq=False)
class Box(Solid):
    """An axis-aligned box; mostly used to bound another solid to a region."""

    box_lo: np.ndarray
    box_hi: np.ndarray

    def __post_init__(self) -> None:
        self.lo = _vec(self.box_lo)
        self.hi = _vec(self.box_hi)

    def field(self, x, y, z):
        lo, hi = self.lo.tolist(), self.hi.tolist()
        fx = np.minimum(x - lo[0], hi[0] - x)
        fy = np.minimum(y - lo[1], hi[1] - y)
        fz = np.minimum(z - lo[2], hi[2] - z)
        return np.minimum(np.minimum(fx, fy), fz)


@dataclass(eq=False)
class Union(Solid):
    """Several solids as one: the field is their maximum, each evaluated only inside its own box."""

    parts: list[Solid]

    def __post_init__(self) -> None:
        self._los = np.array([p.lo for p in self.parts])
        self._his = np.array([p.hi for p in self.parts])
        self.lo = self._los.min(axis=0)
        self.hi = self._his.max(axis=0)

    def field(self, x, y, z):
        shape = np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))
        out = np.full(shape, -FAR, dtype=np.result_type(x, y, z))
        axes = _grid_axes(x, y, z)
        # reach a little past each part's box so its field (and slope) is real where voxels touch it
        pad = 0.0 if axes is None else 2.0 * max(float(np.abs(np.diff(a)).max(initial=0.0)) for a in axes)
        if axes is None:
            for part in self.parts:
                np.maximum(out, part.field(x, y, z), out=out)
            return out
        block_lo = np.array([a[0] for a in axes]) - pad
        block_hi = np.array([a[-1] for a in axes]) + pad
        near = np.all((self._los <= block_hi) & (self._his >= block_lo), axis=1)
        for part in (p for p, hit in zip(self.parts, near, strict=True) if hit):
            sub = _overlap(axes, part.lo - pad, part.hi + pad)
            if sub is None:
                continue
            (i0, i1), (j0, j1), (k0, k1) = sub
            view = out[k0:k1, j0:j1, i0:i1]
            np.maximum(view, part.field(x[:, :, i0:i1], y[:, j0:j1, :], z[k0:k1, :, :]), out=view)
        return out


@dataclass(eq=False)
class Intersection(Solid):
    """Points inside ``keep`` and (for ``cut_out=False``) inside ``within``, or outside it."""

    keep: Solid
    within: Solid
    cut_out: bool = False

    def __post_init__(self) -> None:
        self.lo = self.keep.lo.copy()
        self.hi = self.keep.hi.copy()
        if not self.cut_out:
            self.lo = np.maximum(self.lo, self.within.lo)
            self.hi = np.minimum(self.hi, self.within.hi)

    def field(self, x, y, z):
        other = self.within.field(x, y, z)
        return np.minimum(self.keep.field(x, y, z), -other if self.cut_out else other)


def _grid_axes(x, y, z):
    """The three 1D axes when the coordinates are a separable block, else None."""
    x, y, z = np.asarray(x), np.asarray(y), np.asarray(z)
    if x.ndim == 3 and x.shape[:2] == (1, 1) and y.shape[::2] == (1, 1) and z.shape[1:] == (1, 1):
        return x.reshape(-1), y.reshape(-1), z.reshape(-1)
    return None


def _overlap(axes, lo, hi):
    """Index ranges (ascending axes) of the points within [lo, hi] on each axis, or None."""
    out = []
    for values, a, b in zip(axes, lo, hi, strict=True):
        start = int(np.searchsorted(values, a, side="left"))
        stop = int(np.searchsorted(values, b, side="right"))
        if stop <= start:
            return None
        out.append((start, stop))
    return out


@dataclass
class Canvas:
    """An axis-aligned LPS grid (axes ascending along +x, +y, +z) with an HU image and a label map."""

    origin: np.ndarray
    spacing: np.ndarray
    shape_kji: tuple[int, int, int]
    background: float = -1000.0
    hu: np.ndarray = field(init=False)
    label: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.origin = _vec(self.origin)
        self.spacing = _vec(self.spacing)
        self.hu = np.full(self.shape_kji, self.background, dtype=np.float32)
        self.label = np.zeros(self.shape_kji, dtype=np.uint8)
        nz, ny, nx = self.shape_kji
        # float32 coordinates halve the memory traffic of every field; 1e-4 mm is far below a voxel
        self.axes = tuple(
            (self.origin[a] + self.spacing[a] * np.arange(n)).astype(np.float32) for a, n in enumerate((nx, ny, nz))
        )

    def _ranges(self, lo: np.ndarray, hi: np.ndarray, pad_mm: float):
        ranges = []
        for a, n in enumerate((self.shape_kji[2], self.shape_kji[1], self.shape_kji[0])):
            start = int(np.floor((lo[a] - pad_mm - self.origin[a]) / self.spacing[a]))
            stop = int(np.ceil((hi[a] + pad_mm - self.origin[a]) / self.spacing[a])) + 1
            start, stop = max(start, 0), min(stop, n)
            if stop <= start:
                return None
            ranges.append((start, stop))
        return ranges

    def paint(
        self,
        solid: Solid,
        value: float | Callable[[np.ndarray], np.ndarray],
        label: int = 0,
        relabel: bool = True,
    ) -> int:
        """Blend ``value`` (HU, or a function of the field) over the voxels the solid covers.

        Voxels whose centre lies inside take ``label`` (``relabel=False`` leaves labels alone).
        Returns how many voxel centres lie inside.
        """
        # pad by two voxels so the field (and its slope) is real wherever a voxel touches the surface
        pad = 2.0 * float(self.spacing.max())
        ranges = self._ranges(solid.lo, solid.hi, pad)
        if ranges is None:
            return 0
        (i0, i1), (j0, j1), (k0, k1) = ranges
        x = self.axes[0][i0:i1].reshape(1, 1, -1)
        y = self.axes[1][j0:j1].reshape(1, -1, 1)
        cap = 1.5 * float(self.spacing.sum())  # a distance field never changes faster than this
        slab = max(1, _CHUNK_VOXELS // max(1, (i1 - i0) * (j1 - j0)))
        inside_count = 0
        for c0 in range(k0, k1, slab):
            c1 = min(c0 + slab, k1)
            # one slice of halo each side, so the slope across slabs matches the unsplit block
            h0, h1 = max(c0 - 1, k0), min(c1 + 1, k1)
            z = self.axes[2][h0:h1].reshape(-1, 1, 1)
            f = solid.field(x, y, z)
            f = np.broadcast_to(f, (h1 - h0, j1 - j0, i1 - i0)).astype(np.float32, copy=False)
            alpha, inside = _coverage(f, c0 - h0, c1 - h0, cap)
            hu = self.hu[c0:c1, j0:j1, i0:i1]
            if callable(value):
                v = value(f[c0 - h0 : c1 - h0])
                hu += alpha * (v - hu)
            else:
                hu += alpha * (np.float32(value) - hu)
            if relabel:
                self.label[c0:c1, j0:j1, i0:i1][inside] = label
            inside_count += int(np.count_nonzero(inside))
        return inside_count


def _coverage(f: np.ndarray, start: int, stop: int, cap: float) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of each voxel of ``f[start:stop]`` inside the surface ``f = 0``, and the inside mask.

    The fraction ramps linearly across one voxel's extent normal to the surface, ``w``: the sum
    of the field's absolute central differences along the three index axes.  Only voxels within
    ``cap / 2`` of the surface can be partly covered, so the slope is computed for those alone.
    """
    core = f[start:stop]
    inside = core >= 0
    alpha = inside.astype(np.float32)
    band = np.abs(core) < 0.5 * cap
    count = int(np.count_nonzero(band))
    if count == 0:
        return alpha, inside
    if count > core.size // 5:  # a thin or small solid: the whole-block slope is cheaper than gathering
        width = np.zeros_like(core)
        for axis in range(3):
            if f.shape[axis] > 1:
                width += np.abs(np.gradient(f, axis=axis)[start:stop])
        np.clip(width, 1e-3, cap, out=width)
        dense = core / width
        dense += 0.5
        np.clip(dense, 0.0, 1.0, out=dense)
        return dense, inside
    k, j, i = np.nonzero(band)
    fk = k + start
    width = np.zeros(k.size, dtype=np.float32)
    for axis, index in ((0, fk), (1, j), (2, i)):
        n = f.shape[axis]
        if n < 2:
            continue
        up = np.minimum(index + 1, n - 1)
        down = np.maximum(index - 1, 0)
        a = [fk, j, i]
        b = [fk, j, i]
        a[axis], b[axis] = up, down
        width += np.abs(f[tuple(a)] - f[tuple(b)]) / (up - down).astype(np.float32)
    np.clip(width, 1e-3, cap, out=width)
    alpha[k, j, i] = np.clip(0.5 + core[k, j, i] / width, 0.0, 1.0)
    return alpha, inside


def fine_volume_mm3(solid: Solid, step_mm: float, lo: np.ndarray | None = None, hi: np.ndarray | None = None) -> float:
    """Volume of a solid by counting points of a fine regular grid (centre sampling)."""
    lo = solid.lo if lo is None else lo
    hi = solid.hi if hi is None else hi
    axes = [np.arange(a + step_mm / 2, b, step_mm) for a, b in zip(lo, hi, strict=True)]
    if any(len(v) == 0 for v in axes):
        return 0.0
    total = 0
    x = axes[0].reshape(1, 1, -1)
    y = axes[1].reshape(1, -1, 1)
    for k in range(0, len(axes[2]), 32):
        z = axes[2][k : k + 32].reshape(-1, 1, 1)
        total += int(np.count_nonzero(np.broadcast_to(solid.field(x, y, z), (z.shape[0], y.shape[1], x.shape[2])) >= 0))
    return total * step_mm**3
