"""Synthetic metastases: sclerotic and lytic bone lesions, and enlarged lymph nodes.

All lesions are **synthetic**: ellipsoids with CT-like densities placed in a phantom, not findings
from patients.  Bone lesions are clipped to the bone they sit in; nodes lie in the fat beside the
aorta or the iliac arteries, clear of vessels, bowel, muscle and organs and never inside bone, as
enlarged nodes do in patients (a node drawn into a vein or a bowel loop of its own density could
not be seen).
Lesions are kept apart, so each is one object in the label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lesionseg.data.phantom import Phantom, _jitter
from lesionseg.data.shapes import Ellipsoid, Intersection, Solid, fine_volume_mm3
from lesionseg.data.tissues import hu_range

# kind -> label name, tissue (density range in tissues.TISSUE_HU), long-axis diameter range in mm
LESION_KINDS: dict[str, dict] = {
    "sclerotic": {"label": "bone_metastasis", "tissue": "sclerotic", "diameter_mm": (3.0, 40.0)},
    "lytic": {"label": "bone_metastasis", "tissue": "lytic", "diameter_mm": (5.0, 40.0)},
    "node": {"label": "nodal_metastasis", "tissue": "node", "diameter_mm": (8.0, 35.0)},
}
# per-case mixtures of kinds (sclerotic, lytic, node): prostate cancer spreads mostly to bone, sclerotic
PATTERNS: dict[str, tuple[float, float, float]] = {
    "sclerotic": (0.7, 0.1, 0.2),
    "lytic": (0.1, 0.7, 0.2),
    "nodal": (0.15, 0.05, 0.8),
    "mixed": (0.4, 0.3, 0.3),
}
ZERO_LESION_PROBABILITY = 0.25
GAP_MM = 3.0  # least space between two lesions' nominal surfaces
NODE_FAT_MM = (1.0, 3.0)  # fat plane between a node and the artery it lies beside
NODE_CLEARANCE_MM = 1.0  # least fat between a node and any other soft tissue
_TRIES = 200
_NODE_TRIES = 400
_SURFACE_DIRECTIONS = 96


@dataclass(eq=False)
class Lesion:
    """One lesion in the phantom's local frame (mm); ``solid`` is what is painted and labelled."""

    id: int
    kind: str
    host: str
    centre: np.ndarray
    radii: np.ndarray
    hu: float
    solid: Solid
    painted_voxels: int = 0

    @property
    def label(self) -> str:
        return LESION_KINDS[self.kind]["label"]

    @property
    def diameter_mm(self) -> float:
        return float(2.0 * self.radii.max())

    def volume_mm3(self) -> float:
        """The lesion's true volume (as clipped to bone), by counting a grid much finer than any scan."""
        step = min(0.5, self.diameter_mm / 25.0)
        return fine_volume_mm3(self.solid, step)


def sample_lesions(
    rng: np.random.Generator,
    phantom: Phantom,
    region_lo: np.ndarray,
    region_hi: np.ndarray,
    max_lesions: int,
    min_diameter_mm: float = 3.0,
) -> list[Lesion]:
    """Draw 0..``max_lesions`` lesions lying wholly inside the scanned box [region_lo, region_hi]."""
    if max_lesions < 0:
        raise ValueError(f"max_lesions must be 0 or more, got {max_lesions}")
    zero = rng.uniform() < ZERO_LESION_PROBABILITY
    count = 0 if zero or max_lesions == 0 else int(rng.integers(1, max_lesions + 1))
    pattern = list(PATTERNS)[int(rng.integers(len(PATTERNS)))]
    kinds = rng.choice(list(LESION_KINDS), size=count, p=PATTERNS[pattern])
    lesions: list[Lesion] = []
    for kind in kinds:
        lo, hi = LESION_KINDS[kind]["diameter_mm"]
        lo = min(max(lo, min_diameter_mm), hi)
        diameter = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        place = _place_node if kind == "node" else _place_in_bone
        lesion = place(rng, phantom, str(kind), diameter, lesions, region_lo, region_hi)
        if lesion is not None:
            lesion.id = len(lesions) + 1
            lesions.append(lesion)
    return lesions


def _shape(rng: np.random.Generator, diameter: float, flat: tuple[float, float]) -> np.ndarray:
    r = diameter / 2.0
    return np.array([r, r * rng.uniform(*flat), r * rng.uniform(*flat)])


def _clear_of(centre: np.ndarray, radius: float, others: list[Lesion]) -> bool:
    return all(np.linalg.norm(centre - o.centre) > radius + o.radii.max() + GAP_MM for o in others)


def _inside(centre: np.ndarray, radius: float, lo: np.ndarray, hi: np.ndarray) -> bool:
    return bool(np.all(centre - radius > lo) and np.all(centre + radius < hi))


def _place_in_bone(rng, phantom: Phantom, kind, diameter, others, lo, hi) -> Lesion | None:
    hosts = [(name, solid) for name, solid in phantom.bone_hosts if _inside((solid.lo + solid.hi) / 2, 0.0, lo, hi)]
    if not hosts:
        return None
    radii = _shape(rng, diameter, (0.75, 1.0))
    rotation = _jitter(rng, 60.0)
    hu = float(rng.uniform(*_tissue_range(phantom, kind)))
    for _ in range(_TRIES):
        name, host = hosts[int(rng.integers(len(hosts)))]
        centre = rng.uniform(host.lo, host.hi)
        # deep enough that most of the lesion is bone, and wholly inside the scan
        if host.at(centre) < min(0.3 * diameter, 4.0) or not _inside(centre, radii[0], lo, hi):
            continue
        if not _clear_of(centre, radii[0], others):
            continue
        solid = Intersection(Ellipsoid(centre, radii, rotation), phantom.bone)
        return Lesion(0, kind, name, centre, radii, hu, solid)
    return None


def truth_lesion_at(truth: list[dict], centre_lps_mm) -> dict | None:
    """The drawn lesion (a row of a case's ``truth.json``) that a lesion found at ``centre_lps_mm`` is: the nearest
    one, if the centre lies within half its diameter plus 6 mm (voxelising and blurring move a small lesion's
    centre by a few mm); None for none."""
    if not truth:
        return None
    distances = [float(np.linalg.norm(np.asarray(t["centre_lps_mm"]) - np.asarray(centre_lps_mm))) for t in truth]
    best = int(np.argmin(distances))
    return truth[best] if distances[best] < 0.5 * truth[best]["diameter_mm"] + 6.0 else None


def _place_node(rng, phantom: Phantom, kind, diameter, others, lo, hi) -> Lesion | None:
    radii = _shape(rng, diameter, (0.6, 0.9))
    rotation = _jitter(rng, 60.0)
    hu = float(rng.uniform(*_tissue_range(phantom, kind)))
    for _ in range(_NODE_TRIES):
        name, vessel = phantom.node_sites[int(rng.integers(len(phantom.node_sites)))]
        t = rng.uniform(0.1, 0.9)
        on_axis = vessel.a + t * (vessel.b - vessel.a)
        axis = (vessel.b - vessel.a) / np.linalg.norm(vessel.b - vessel.a)
        away = rng.normal(size=3)
        away -= (away @ axis) * axis
        away /= np.linalg.norm(away)
        vessel_r = vessel.radius_a + t * (vessel.radius_b - vessel.radius_a)
        # the node's own extent towards the artery, so that it is the fat plane that separates them
        reach = float(np.linalg.norm(radii * (rotation.T @ away)))
        centre = on_axis + away * (vessel_r + reach + rng.uniform(*NODE_FAT_MM))
        if not _inside(centre, radii[0], lo, hi) or not _clear_of(centre, radii[0], others):
            continue
        if phantom.cavity.at(centre) < radii[1] or phantom.bone.at(centre) > -radii[1]:
            continue
        if any(organ.at(centre) > -2.0 for organ in phantom.node_keep_out):
            continue
        if not in_fat(phantom, _surface(centre, radii + NODE_CLEARANCE_MM, rotation)).all():
            continue
        solid = Intersection(Ellipsoid(centre, radii, rotation), phantom.bone, cut_out=True)
        return Lesion(0, kind, name, centre, radii, hu, solid)
    return None


def _surface(centre: np.ndarray, radii: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Points spread evenly over an ellipsoid's surface (a Fibonacci sphere, stretched), and its centre."""
    n = np.arange(_SURFACE_DIRECTIONS) + 0.5
    polar = np.arccos(1.0 - 2.0 * n / _SURFACE_DIRECTIONS)
    turn = np.pi * (1.0 + 5.0**0.5) * n
    unit = np.stack([np.cos(turn) * np.sin(polar), np.sin(turn) * np.sin(polar), np.cos(polar)])
    return np.vstack([centre, (centre[:, None] + rotation @ (radii[:, None] * unit)).T])


def in_fat(phantom: Phantom, points: np.ndarray) -> np.ndarray:
    """Per point (rows of LPS mm): True where the soft tissue painted last there is fat (bone not counted)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    fat = np.zeros(len(points), dtype=bool)
    lo, hi = points.min(axis=0), points.max(axis=0)
    for layer in phantom.soft_layers:  # in painting order: a later layer covers an earlier one
        if np.any(layer.solid.hi < lo) or np.any(layer.solid.lo > hi):
            continue
        boxed = np.flatnonzero(np.all((points >= layer.solid.lo) & (points <= layer.solid.hi), axis=1))
        if len(boxed):
            near = points[boxed]
            covered = boxed[layer.solid.field(near[:, 0], near[:, 1], near[:, 2]) >= 0.0]
            fat[covered] = layer.tissue == "fat"
    return fat


def _tissue_range(phantom: Phantom, kind: str) -> tuple[float, float]:
    return hu_range(LESION_KINDS[kind]["tissue"], phantom.phase)
