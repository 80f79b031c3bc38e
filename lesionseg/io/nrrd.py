"""NRRD files through pynrrd, in the space Slicer writes (left-posterior-superior) and reads any of."""

from __future__ import annotations

from pathlib import Path

import nrrd
import numpy as np

from lesionseg.image import Image

# Per-axis sign that turns a NRRD space into LPS.
_SPACE_TO_LPS = {
    "left-posterior-superior": np.array([1.0, 1.0, 1.0]),
    "right-anterior-superior": np.array([-1.0, -1.0, 1.0]),
    "left-anterior-superior": np.array([1.0, -1.0, 1.0]),
    "right-posterior-superior": np.array([-1.0, 1.0, 1.0]),
}
_SPACE_ALIASES = {"lps": "left-posterior-superior", "ras": "right-anterior-superior", "las": "left-anterior-superior"}


def _header_geometry(header: dict, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    space = str(header.get("space", "")).lower()
    space = _SPACE_ALIASES.get(space, space)
    if space not in _SPACE_TO_LPS:
        raise ValueError(f"{path}: NRRD space {header.get('space')!r} is not a 3D patient space (LPS or RAS)")
    sign = _SPACE_TO_LPS[space]
    directions = np.asarray(header["space directions"], dtype=float)
    rows = [row for row in directions if np.all(np.isfinite(row))]  # drop a 'none' list axis
    if len(rows) != 3:
        raise ValueError(f"{path}: expected 3 spatial axes in 'space directions', got {len(rows)}")
    linear = (np.array(rows) * sign).T  # columns are axis vectors in LPS
    origin = np.asarray(header.get("space origin", [0, 0, 0]), dtype=float) * sign
    return linear, origin


def read_nrrd(path: str | Path) -> tuple[Image, dict]:
    """Return the image and the raw header (a .seg.nrrd header carries segment metadata)."""
    data, header = nrrd.read(str(path), index_order="C")
    if data.ndim == 4:
        # A .seg.nrrd with overlapping layers stores one layer per leading axis; collapse if single.
        if data.shape[0] != 1:
            raise ValueError(
                f"{path}: holds {data.shape[0]} overlapping segment layers; export a merged labelmap instead"
            )
        data = data[0]
    if data.ndim == 2:
        data = data[np.newaxis]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume, got shape {data.shape}")
    linear, origin = _header_geometry(header, path)
    spacing = np.linalg.norm(linear, axis=0)
    return Image(np.ascontiguousarray(data), spacing=spacing, origin=origin, direction=linear / spacing), header


def write_nrrd(image: Image, path: str | Path, extra_fields: dict | None = None, compress: bool = True) -> None:
    header = {
        "space": "left-posterior-superior",
        "space directions": (image.direction * image.spacing).T,
        "space origin": image.origin,
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip" if compress else "raw",
    }
    custom = {}
    if extra_fields:
        header.update(extra_fields)
        custom = {key: "string" for key in extra_fields if ":" in key}
    nrrd.write(str(path), np.ascontiguousarray(image.array), header, index_order="C", custom_field_map=custom)
