"""Judges for DICOM exports: plastimatch reads an RTSTRUCT back to masks, dciodvfy checks IODs, and a
reference even-odd filler for voxel-edge polygons."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lesionseg.image import Image
from lesionseg.io import read_image
from lesionseg.io.sitk import to_sitk
from lesionseg.orientation import orientation_code, reorient

PLASTIMATCH = shutil.which("plastimatch")
DCIODVFY = shutil.which("dciodvfy")


def plastimatch_masks(rtstruct: Path, ct_dir: Path, out_dir: Path) -> dict[str, Image]:
    """Rasterize every structure of ``rtstruct`` on the CT series with plastimatch: {structure file stem: mask}."""
    if PLASTIMATCH is None:
        raise RuntimeError("plastimatch is not installed (apt-get install plastimatch)")
    command = [
        PLASTIMATCH, "convert", "--input", str(rtstruct), "--referenced-ct", str(ct_dir),
        "--output-prefix", str(out_dir), "--prefix-format", "nrrd",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise AssertionError(f"plastimatch failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return {path.name.removesuffix(".nrrd"): read_image(path) for path in sorted(out_dir.glob("*.nrrd"))}


def on_grid(image: Image, grid: Image) -> np.ndarray:
    """``image``'s voxels on ``grid``: re-indexed when both sample the same points, else nearest neighbour."""
    if image.same_grid(grid):
        return image.array
    reindexed = reorient(image, orientation_code(grid.direction))
    if reindexed.same_grid(grid):
        return reindexed.array
    moving = to_sitk(image)
    out = sitk.Resample(moving, to_sitk(grid), sitk.Transform(), sitk.sitkNearestNeighbor, 0, moving.GetPixelID())
    return sitk.GetArrayFromImage(out)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def dciodvfy(path: Path) -> tuple[int, list[str]]:
    """Run dciodvfy: its exit status and its Error lines."""
    if DCIODVFY is None:
        raise RuntimeError("dciodvfy is not installed (apt-get install dicom3tools)")
    done = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    lines = (done.stdout + done.stderr).splitlines()
    return done.returncode, [line for line in lines if "Error" in line]


def fill_each_and_or(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Rasterize like plastimatch: each polygon filled on its own (even-odd at pixel centres), then OR'ed.

    The polygons run along voxel edges (half-integer coordinates, axis-aligned sides), so each
    side along j flips the pixels to its left in the rows it spans.
    """
    out = np.zeros(shape, dtype=bool)
    for polygon in polygons:
        corners = np.round(np.asarray(polygon) * 2) / 2
        assert np.all(np.mod(corners, 1.0) == 0.5), "a vertex is off the voxel corners"
        inside = np.zeros(shape, dtype=bool)
        ends = np.roll(corners, -1, axis=0)
        for (x0, y0), (x1, y1) in zip(corners, ends, strict=True):
            assert x0 == x1 or y0 == y1, "a side is not along a voxel edge"
            if y0 != y1:
                lo, hi = sorted((y0, y1))
                inside[int(lo + 0.5) : int(hi + 0.5), : int(x0 + 0.5)] ^= True
        out |= inside
    return out
