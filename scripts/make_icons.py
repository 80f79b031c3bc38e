"""Draw LesionSeg's 128×128 PNG icons (the extension's and one per Slicer module).

Run from the repository root: ``python scripts/make_icons.py`` (add ``--out DIR`` to write elsewhere).
The icons are pictograms drawn from a few shapes, so they stay legible at Slicer's 16–32 px module sizes
and can be regenerated identically with the same matplotlib version.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Circle, Ellipse, FancyBboxPatch, PathPatch  # noqa: E402
from matplotlib.path import Path as MplPath  # noqa: E402

SIZE_PX = 128
DPI = 100
REPO = Path(__file__).resolve().parent.parent

# One palette for the family: dark tile, CT-grey body, organ/lesion colours close to Slicer's defaults.
TILE = "#1f2a38"
BODY = "#8a949e"
SPLEEN = "#9d3b5c"
SPLEEN_EDGE = "#f2c14e"
BONE = "#e9e4d4"
LESION = "#ff6a3d"
CURVE_LOSS = "#5fb3f0"
CURVE_DICE = "#7bd389"


def _canvas() -> tuple[plt.Figure, plt.Axes]:
    fig = plt.figure(figsize=(SIZE_PX / DPI, SIZE_PX / DPI), dpi=DPI)
    fig.patch.set_alpha(0.0)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.add_patch(FancyBboxPatch((0.04, 0.04), 0.92, 0.92, boxstyle="round,pad=0,rounding_size=0.16", color=TILE, lw=0))
    return fig, ax


def _smooth_closed_path(points: list[tuple[float, float]]) -> MplPath:
    """A closed curve through ``points`` built from quadratic Béziers between edge midpoints."""
    pts = np.asarray(points, float)
    mids = (pts + np.roll(pts, -1, axis=0)) / 2
    vertices = [mids[-1]]
    codes = [MplPath.MOVETO]
    for index, point in enumerate(pts):
        vertices += [point, mids[index]]
        codes += [MplPath.CURVE3, MplPath.CURVE3]
    return MplPath(vertices, codes)


def _spleen(ax: plt.Axes, centre: tuple[float, float], scale: float, outline: bool) -> None:
    # A kidney-bean crescent: convex on the left (diaphragm side), notched hilum on the right.
    shape = [(-0.10, 0.34), (-0.30, 0.18), (-0.34, -0.10), (-0.18, -0.34), (0.06, -0.30), (0.10, -0.12),
             (0.00, 0.00), (0.12, 0.14), (0.12, 0.32)]  # fmt: skip
    points = [(centre[0] + scale * x, centre[1] + scale * y) for x, y in shape]
    ax.add_patch(PathPatch(_smooth_closed_path(points), facecolor=SPLEEN, edgecolor="none"))
    if outline:
        ax.add_patch(PathPatch(_smooth_closed_path(points), facecolor="none", edgecolor=SPLEEN_EDGE, lw=3.2))


def draw_spleenseg(ax: plt.Axes) -> None:
    """A spleen with its segmentation contour."""
    _spleen(ax, (0.56, 0.50), 1.05, outline=True)


def draw_prostatemetseg(ax: plt.Axes) -> None:
    """A pelvis seen from the front (iliac wings, sacrum, obturator rings) with bone metastases as dots."""
    for side in (-1, 1):
        # Iliac wing: flares up and out from the hip joint.
        ax.add_patch(Ellipse((0.5 + side * 0.25, 0.64), 0.34, 0.22, angle=side * 38, color=BONE, lw=0))
        # Obturator ring: a bone loop around a foramen, below the hip joint.
        ax.add_patch(Ellipse((0.5 + side * 0.15, 0.32), 0.22, 0.18, angle=-side * 20, color=BONE, lw=0))
        ax.add_patch(Ellipse((0.5 + side * 0.15, 0.32), 0.11, 0.08, angle=-side * 20, color=TILE, lw=0))
        # Femoral head in the acetabulum.
        ax.add_patch(Circle((0.5 + side * 0.31, 0.45), 0.06, color=BODY, lw=0))
    sacrum = [(0.40, 0.78), (0.60, 0.78), (0.56, 0.56), (0.50, 0.44), (0.44, 0.56)]
    ax.add_patch(PathPatch(_smooth_closed_path(sacrum), facecolor=BONE, edgecolor=TILE, lw=1.5))
    for x, y, r in [(0.22, 0.72, 0.05), (0.52, 0.64, 0.04), (0.75, 0.58, 0.045), (0.36, 0.26, 0.04)]:
        ax.add_patch(Circle((x, y), r, color=LESION, lw=0))


def draw_training(ax: plt.Axes) -> None:
    """Learning curves: a falling loss and a rising Dice over epochs, on axes."""
    ax.plot([0.16, 0.16, 0.88], [0.86, 0.16, 0.16], color=BONE, lw=3, solid_capstyle="round")
    epochs = np.linspace(0, 1, 60)
    x = 0.18 + 0.68 * epochs
    loss = 0.20 + 0.60 * np.exp(-4.5 * epochs)
    dice = 0.22 + 0.58 * (1 - np.exp(-5.0 * epochs))
    ax.plot(x, loss, color=CURVE_LOSS, lw=4, solid_capstyle="round")
    ax.plot(x, dice, color=CURVE_DICE, lw=4, solid_capstyle="round")
    ax.add_patch(Circle((x[-1], dice[-1]), 0.045, color=CURVE_DICE, lw=0))


def draw_extension(ax: plt.Axes) -> None:
    """An axial CT slice: body outline, a spleen, and two lesions."""
    ax.add_patch(Ellipse((0.5, 0.5), 0.80, 0.62, color=BODY, lw=0))
    ax.add_patch(Ellipse((0.5, 0.5), 0.70, 0.52, color="#3b4654", lw=0))
    ax.add_patch(Circle((0.5, 0.30), 0.06, color=BONE, lw=0))  # vertebral body
    _spleen(ax, (0.71, 0.53), 0.48, outline=True)
    for x, y, r in [(0.33, 0.56, 0.06), (0.45, 0.66, 0.04)]:
        ax.add_patch(Circle((x, y), r, color=LESION, lw=0))


ICONS: dict[str, Callable[[plt.Axes], None]] = {
    "Resources/Icons/LesionSeg.png": draw_extension,
    "SpleenSeg/Resources/Icons/SpleenSeg.png": draw_spleenseg,
    "ProstateMetSeg/Resources/Icons/ProstateMetSeg.png": draw_prostatemetseg,
    "LesionSegTraining/Resources/Icons/LesionSegTraining.png": draw_training,
}


def render(draw: Callable[[plt.Axes], None], target: Path) -> None:
    fig, ax = _canvas()
    draw(ax)
    target.parent.mkdir(parents=True, exist_ok=True)
    # No "Software" chunk: the file then depends on the drawing alone, not on the tool's version string.
    fig.savefig(target, dpi=DPI, transparent=True, metadata={"Software": None})
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO, help="root to write the icon paths under")
    args = parser.parse_args(argv)
    for relative, draw in ICONS.items():
        render(draw, args.out / relative)
        print(args.out / relative)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
