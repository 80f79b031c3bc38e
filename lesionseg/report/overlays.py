"""PNG overlays of the axial slices where a prediction and its reference disagree most.

Slices are shown the radiological way: the patient's right on the viewer's left, anterior at the top.
An oblique grid is shown along the axes nearest to it (no resampling), so its "axial" slice is tilted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lesionseg.image import Image, require_same_grid
from lesionseg.io.atomic import atomic_path
from lesionseg.labels import LabelInfo
from lesionseg.orientation import reorient

# Hounsfield window for CT backgrounds: soft tissue (W 400, L 40), where abdominal organs and lesions show.
_CT_WINDOW = (-160.0, 240.0)
# Below this minimum a background is taken as CT in HU (air is -1000); other images get a percentile window.
_CT_MINIMUM_HU = -500.0
_DISAGREEMENT_RGBA = (1.0, 0.0, 1.0, 0.35)


def disagreement_slices(pred: np.ndarray, ref: np.ndarray, count: int = 3, min_gap: int = 3) -> list[int]:
    """Axial indices (first array axis) with the most voxels where the labels differ, at least ``min_gap`` apart.

    With no disagreement, the slices with the most foreground are chosen; with no foreground, none.
    """
    score = np.count_nonzero((pred != ref).reshape(len(pred), -1), axis=1)
    if not score.any():
        score = np.count_nonzero(((pred > 0) | (ref > 0)).reshape(len(pred), -1), axis=1)
    chosen: list[int] = []
    for k in np.argsort(-score, kind="stable"):
        if score[k] == 0 or len(chosen) == count:
            break
        if all(abs(int(k) - c) >= min_gap for c in chosen):
            chosen.append(int(k))
    return sorted(chosen)


def _window(background: np.ndarray) -> tuple[float, float]:
    if float(background.min()) <= _CT_MINIMUM_HU:
        return _CT_WINDOW
    low, high = np.percentile(background, [1, 99])
    return float(low), float(max(high, low + 1e-6))


def render_slice(
    path: Path,
    pred: np.ndarray,
    ref: np.ndarray,
    spacing_ij: tuple[float, float],
    labels: Mapping[int, LabelInfo],
    title: str,
    background: np.ndarray | None = None,
    window: tuple[float, float] | None = None,
    edges: tuple[str, str, str, str] = ("R", "L", "A", "P"),
) -> Path:
    """Write one slice (arrays ``[row=j, column=i]``) with reference (solid) and prediction (dashed) contours."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows, cols = pred.shape
    width_mm, height_mm = cols * spacing_ij[0], rows * spacing_ij[1]
    fig = Figure(figsize=(7.0, max(3.0, 6.0 * height_mm / width_mm) + 0.8), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    extent = (0.0, width_mm, height_mm, 0.0)
    if background is not None:
        low, high = window or _window(background)
        ax.imshow(background, cmap="gray", vmin=low, vmax=high, extent=extent, interpolation="nearest")
    else:
        # Without an image, show the masks themselves: where both agree on foreground is brightest.
        masks = 0.35 * (ref > 0) + 0.35 * (pred > 0)
        ax.imshow(masks, cmap="gray", vmin=0.0, vmax=1.0, extent=extent, interpolation="nearest")
    overlay = np.zeros((rows, cols, 4))
    overlay[pred != ref] = _DISAGREEMENT_RGBA
    ax.imshow(overlay, extent=extent, interpolation="nearest")
    x = (np.arange(cols) + 0.5) * spacing_ij[0]
    y = (np.arange(rows) + 0.5) * spacing_ij[1]
    handles = []
    for value in sorted(set(np.unique(pred).tolist()) | set(np.unique(ref).tolist())):
        if value == 0:
            continue
        info = labels.get(int(value), LabelInfo.default(int(value)))
        for mask, style, role in ((ref == value, "solid", "reference"), (pred == value, "dashed", "prediction")):
            if mask.any() and not mask.all():
                ax.contour(
                    x, y, mask.astype(float), levels=[0.5], colors=[info.color], linestyles=style, linewidths=1.6
                )
            handles.append(Line2D([], [], color=info.color, linestyle=style, label=f"{info.name} {role}"))
    handles.append(Patch(color=_DISAGREEMENT_RGBA, label="disagreement"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=3, fontsize=8, frameon=False)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    # patient directions at the left, right, top and bottom edges (axial by default)
    for text, xy in zip(edges, ((0.01, 0.5), (0.99, 0.5), (0.5, 0.99), (0.5, 0.01)), strict=True):
        ax.text(*xy, text, transform=ax.transAxes, color="yellow", fontsize=9, ha="center", va="center")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def _file_stem(case: str) -> str:
    # Case names come from users' CSVs; keep them from naming folders or odd files.
    return re.sub(r"[^A-Za-z0-9._-]+", "_", case).strip("._") or "case"


def case_overlays(
    out_dir: Path,
    case: str,
    pred: Image,
    ref: Image,
    image: Image | None = None,
    count: int = 3,
    labels: Mapping[int, LabelInfo] | None = None,
) -> list[Path]:
    """Write ``<case>_axial_<k>.png`` for the ``count`` slices that disagree most; returns their paths."""
    require_same_grid(pred, ref, what="prediction")
    if image is not None:
        require_same_grid(image, ref, what="report image")
    # "LPS" re-indexing puts k along the patient's z axis, i towards the left and j towards the back.
    pred_v, ref_v = reorient(pred, "LPS"), reorient(ref, "LPS")
    image_v = reorient(image, "LPS") if image is not None else None
    window = _window(image_v.array) if image_v is not None else None
    spacing_ij = (float(ref_v.spacing[0]), float(ref_v.spacing[1]))
    paths = []
    for k in disagreement_slices(pred_v.array, ref_v.array, count):
        differ = int(np.count_nonzero(pred_v.array[k] != ref_v.array[k]))
        z = float(ref_v.world([0, 0, k])[2])
        title = f"{case}: axial slice {k} (z = {z:.1f} mm), {differ} voxels disagree"
        paths.append(
            render_slice(
                Path(out_dir) / f"{_file_stem(case)}_axial_{k:03d}.png",
                pred_v.array[k],
                ref_v.array[k],
                spacing_ij,
                labels or {},
                title,
                image_v.array[k] if image_v is not None else None,
                window,
            )
        )
    return paths
