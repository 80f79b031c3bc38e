"""Two-stage (cascade) models: a coarse stage finds the region, a fine stage segments a crop around it.

Training writes ``OUTPUT/stage1`` and ``OUTPUT/stage2``, each an ordinary registry model folder, and
``OUTPUT/cascade.json`` naming them and the crop margin.  Stage 1 is the config at ``coarse_factor``
times its voxel size on whole volumes; stage 2 is the config unchanged, trained on the box around the
ground-truth labels plus ``margin_mm``.  ``segment_cascade`` chains them: stage 1 on the whole image,
stage 2 on the box around stage 1's labels plus the same margin, pasted back into the full grid.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np

from lesionseg.image import Image
from lesionseg.io.atomic import write_json_atomic
from lesionseg.labels import LabelInfo
from lesionseg.training.config import load_config
from lesionseg.training.loop import Progress, TrainResult, train

CASCADE_FILE = "cascade.json"


def stage_configs(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(coarse, fine) configs of a cascade."""
    spacing = config["preprocessing"]["spacing"]
    if spacing is None:
        raise ValueError("a cascade needs preprocessing.spacing in the config (the coarse stage scales it)")
    cascade = config["cascade"]
    coarse = copy.deepcopy(config)
    coarse["preprocessing"]["spacing"] = [float(s) * cascade["coarse_factor"] for s in spacing]
    coarse["preprocessing"]["crop_to_label_mm"] = 0.0
    fine = copy.deepcopy(config)
    fine["preprocessing"]["crop_to_label_mm"] = float(cascade["margin_mm"])
    base_id = config["model"]["id"] or "cascade"
    coarse["model"]["id"], fine["model"]["id"] = f"{base_id}-stage1", f"{base_id}-stage2"
    return coarse, fine


def train_cascade(
    dataset_dir: str | Path,
    config_source: str | Path | dict[str, Any] | None,
    output: str | Path,
    epochs: int | None = None,
    resume: bool = False,
    device: str = "auto",
    progress: Progress | None = None,
) -> list[TrainResult]:
    """Train both stages (each resumable on its own) and write ``cascade.json`` last; returns the stages run."""
    output = Path(output)
    saved = output / "cascade-config.json"
    if resume:
        if not saved.is_file():
            raise ValueError(f"--resume: {output} holds no cascade run; start without --resume")
        # A resumed cascade keeps the config it started with, for the stage not yet begun too.
        config = load_config(json.loads(saved.read_text(encoding="utf-8")))
    else:
        if saved.exists():
            raise ValueError(
                f"{output} already holds a cascade run; add --resume to continue it, or choose a new --output"
            )
        config = load_config(config_source)
        write_json_atomic(saved, config)
    coarse, fine = stage_configs(config)
    results = []
    for name, stage in (("stage1", coarse), ("stage2", fine)):
        folder = output / name
        finished = (folder / "spec.json").is_file()
        if resume and finished:
            continue  # this stage completed before the interruption
        stage_resume = resume and (folder / "checkpoint_latest.pt").is_file()

        def tagged(event: dict[str, Any], stage_name: str = name) -> None:
            if progress is not None:
                progress({**event, "stage": f"train-{stage_name}"})

        results.append(
            train(dataset_dir, None if stage_resume else stage, folder, epochs, stage_resume, device, tagged)
        )
    write_json_atomic(
        output / CASCADE_FILE,
        {"format": "lesionseg-cascade/1", "stages": ["stage1", "stage2"], "margin_mm": config["cascade"]["margin_mm"]},
    )
    return results


def segment_cascade(
    image: Image, cascade_dir: str | Path, device: str = "auto", progress: Any = None
) -> tuple[Image, list[LabelInfo]]:
    """Stage 1 on the whole image, stage 2 on the box around its labels; the labelmap is on ``image``'s grid."""
    from lesionseg.inference.pipeline import segment_image

    folder = Path(cascade_dir)
    if not (folder / CASCADE_FILE).is_file():
        raise FileNotFoundError(f"{folder} holds no {CASCADE_FILE}; train one with `lesionseg train --cascade`")
    description = json.loads((folder / CASCADE_FILE).read_text(encoding="utf-8"))
    first, second = (folder / name for name in description["stages"])
    coarse, labels = segment_image(image, first, device, progress)
    found = np.argwhere(coarse.array > 0)
    if len(found) == 0:
        return coarse, labels  # nothing found: nothing to refine
    margin = [int(np.ceil(description["margin_mm"] / s)) for s in image.spacing[::-1]]  # in (k, j, i) order
    low = np.maximum(found.min(0) - margin, 0)
    high = np.minimum(found.max(0) + np.array(margin) + 1, image.array.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))
    start_ijk = low[::-1].astype(float)
    crop = Image(image.array[box], image.spacing, image.world(start_ijk), image.direction)
    fine, labels = segment_image(crop, second, device, progress)
    out = np.zeros(image.array.shape, dtype=fine.array.dtype)
    out[box] = fine.array
    return image.with_array(out), labels
