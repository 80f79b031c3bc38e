"""Closed polygons that follow the voxel edges of a 2D mask, one polygon per connected piece.

Coordinates are continuous pixel indices ``(i, j)`` (column, row): pixel ``(i, j)`` covers
``[i - 0.5, i + 0.5] x [j - 0.5, j + 0.5]``, so every vertex lies on a half-integer lattice point.

Why voxel edges: a reader fills a contour by testing pixel centres.  A polygon on the edges
encloses exactly the centres of the mask, so the round trip is exact (Dice 1.0); a polygon
through voxel centres loses about half a voxel along every edge.  No vertex or edge of ours
passes through a pixel centre, so no reader meets a tie.

Holes use the keyhole technique: each hole is spliced into the polygon of the piece around it
through a zero-width cut that runs along voxel edges, out and back.  A doubled cut changes
no even-odd or winding count, so readers that fill each polygon on its own (plastimatch ORs
the contours of a slice unless told ``--xor-contours``; SlicerRT; most planning systems) get
the hole right.  ``CLOSEDPLANAR_XOR`` is newer and readers that predate it, plastimatch by
default among them, would fill such holes in.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

# Edge directions in counter-clockwise order, so that ``(d + 1) % 4`` is a left turn.
_STEP_I = np.array([1, 0, -1, 0])
_STEP_J = np.array([0, 1, 0, -1])
# For an edge starting at lattice vertex (u, v) with direction d, the mask pixel on its left.
_LEFT_PIXEL_DI = np.array([0, -1, -1, 0])
_LEFT_PIXEL_DJ = np.array([0, 0, -1, -1])


def _boundary_loops(mask: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, int]:
    """Trace every boundary loop of ``mask`` along pixel edges.

    Returns the loops (corner vertices only, as (n, 2) lattice indices ``(u, v)``; vertex
    ``(u, v)`` sits at pixel coordinate ``(u - 0.5, v - 0.5)``), the 4-connected component that
    each loop borders, and the number of components.  The mask lies on the left of every loop,
    so outer loops run counter-clockwise in (i, j) and holes clockwise.
    """
    nj, ni = mask.shape
    pad = np.pad(mask, 1)
    fg = pad[1:-1, 1:-1]
    out = np.zeros((nj + 1, ni + 1, 4), dtype=bool)
    out[:nj, :ni, 0] = fg & ~pad[:-2, 1:-1]  # lower side of the pixel, running +i
    out[:nj, 1:, 1] = fg & ~pad[1:-1, 2:]  # side at larger i, running +j
    out[1:, 1:, 2] = fg & ~pad[2:, 1:-1]  # side at larger j, running -i
    out[1:, :ni, 3] = fg & ~pad[1:-1, :-2]  # side at smaller i, running -j
    edges = np.flatnonzero(out)
    if edges.size == 0:
        return [], np.zeros(0, dtype=int), 0
    v, u, d = np.unravel_index(edges, out.shape)
    eu, ev = u + _STEP_I[d], v + _STEP_J[d]
    left, straight, right = (d + 1) % 4, d, (d + 3) % 4
    # Where two loops meet at a corner (pixels touching only diagonally), turning left keeps
    # each pixel's own outline: the pieces stay apart, matching 4-connected components.
    nxt_dir = np.where(out[ev, eu, left], left, np.where(out[ev, eu, straight], straight, right))
    nxt = np.searchsorted(edges, np.ravel_multi_index((ev, eu, nxt_dir), out.shape))
    labels, count = ndimage.label(mask)
    owner = labels[v + _LEFT_PIXEL_DJ[d], u + _LEFT_PIXEL_DI[d]]

    nxt_list = nxt.tolist()
    visited = np.zeros(edges.size, dtype=bool)
    loops: list[np.ndarray] = []
    loop_owner: list[int] = []
    for start in range(edges.size):
        if visited[start]:
            continue
        cycle = [start]
        edge = nxt_list[start]
        while edge != start:
            cycle.append(edge)
            edge = nxt_list[edge]
        idx = np.asarray(cycle)
        visited[idx] = True
        dirs = d[idx]
        corner = dirs != np.roll(dirs, 1)  # keep only vertices where the outline turns
        loops.append(np.stack([u[idx][corner], v[idx][corner]], axis=1))
        loop_owner.append(int(owner[start]))
    return loops, np.asarray(loop_owner), count


def _signed_area(loop: np.ndarray) -> float:
    x, y = loop[:, 0].astype(float), loop[:, 1].astype(float)
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _splice_hole(polygon: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Join ``hole`` into ``polygon`` through a cut from the nearest pair of vertices.

    The cut is an L along lattice lines (first along i, then along j), never a diagonal: a
    diagonal between half-integer points can cross a pixel centre exactly.
    """
    dist, nearest = cKDTree(polygon).query(hole)
    b = int(np.argmin(dist))
    a = int(nearest[b])
    p, h = polygon[a], hole[b]
    bend = np.array([[h[0], p[1]]])
    if np.array_equal(bend[0], p) or np.array_equal(bend[0], h):
        bend = bend[:0]
    hole_walk = np.concatenate([hole[b:], hole[: b + 1]])
    return np.concatenate([polygon[: a + 1], bend, hole_walk, bend[::-1], polygon[a:]])


def mask_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """Keyhole polygons (float (n, 2) arrays of (i, j) pixel coordinates) for a 2D mask.

    One polygon per 4-connected piece; holes are cut in with keyholes (see the module notes).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"a slice mask must be 2D, got shape {mask.shape}")
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return []
    columns = np.flatnonzero(mask.any(axis=0))
    # Work on the mask's bounding box only: the slice around an organ is mostly empty.
    offset = np.array([columns[0], rows[0]], dtype=np.float64)
    mask = mask[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
    loops, owners, count = _boundary_loops(mask)
    outers: dict[int, np.ndarray] = {}
    holes: dict[int, list[np.ndarray]] = {}
    for loop, owner in zip(loops, owners, strict=True):
        if _signed_area(loop) > 0:
            outers[int(owner)] = loop
        else:
            holes.setdefault(int(owner), []).append(loop)
    polygons = []
    for piece in range(1, count + 1):
        polygon = outers[piece]
        # Big holes first: their cuts are the ones worth keeping short.
        for hole in sorted(holes.get(piece, []), key=lambda h: -len(h)):
            polygon = _splice_hole(polygon, hole)
        polygons.append(polygon.astype(np.float64) - 0.5 + offset)
    return polygons


def split_rows(mask: np.ndarray) -> list[np.ndarray]:
    """Cut a mask into two masks at the middle row of its extent (for contours too long to store).

    The pieces share only voxel edges, so filled separately and combined with OR or XOR they
    give back the mask exactly.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size < 2:
        raise ValueError("cannot split a one-row mask further")
    cut = (int(rows[0]) + int(rows[-1]) + 1) // 2
    top, bottom = np.zeros_like(mask), np.zeros_like(mask)
    top[:cut] = mask[:cut]
    bottom[cut:] = mask[cut:]
    return [top, bottom]


def pieces(mask: np.ndarray) -> list[np.ndarray]:
    """The 4-connected pieces of a 2D mask, each as its own full-size mask."""
    labels, count = ndimage.label(mask)
    return [labels == n for n in range(1, count + 1)]
