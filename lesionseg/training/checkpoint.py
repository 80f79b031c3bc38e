"""Checkpoints that load with ``torch.load(weights_only=True)``: tensors and plain types only."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lesionseg.io.atomic import atomic_path

LATEST = "checkpoint_latest.pt"
BEST = "checkpoint_best.pt"
FORMAT = "lesionseg-checkpoint/1"


def rng_state(transforms: list) -> dict[str, Any]:
    """Every random source a resumed run must continue from, as tensors and plain types."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
        "transforms": [_random_state_of(t) for t in transforms],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _random_state_of(transform: Any) -> list:
    name, keys, pos, has_gauss, gauss = transform.R.get_state()
    return [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]


def restore_rng_state(state: dict[str, Any], transforms: list) -> None:
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    name, keys, pos, has_gauss, np_gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state.get("transforms", [])
    if len(saved) != len(transforms):
        raise ValueError(
            f"the checkpoint holds {len(saved)} random transform states, the config builds {len(transforms)}; "
            "resume with the config the run started with"
        )
    for transform, (name, keys, pos, has_gauss, gauss) in zip(transforms, saved, strict=True):
        transform.R.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a kill leaves the previous checkpoint whole."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch reports truncation, garbage and refused pickles each its own way
        from lesionseg.errors import UnreadableFileError, first_line

        raise UnreadableFileError(
            f"{path} cannot be loaded as a training checkpoint ({first_line(error)}); it is damaged or not one. "
            "Restore it from a backup, or start a new training in a new --output"
        ) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a LesionSeg training checkpoint ({FORMAT})")
    return state
