"""Two-stage (cascade) models: a coarse stage finds the region, a fine stage segments a crop around it.

Training writes ``OUTPUT/stage1`` and ``OUTPUT/stage2``, each an ordinary model folder, then ``OUTPUT/spec.json``:
stage 2's spec with its weights path pointing into ``stage2/`` and the spec option
``cascade: {coarse_model: "stage1", margin_mm}``.  So ``OUTPUT`` is one registry model, and inference
(:func:`lesionseg.inference.pipeline.segment_image`) chains the stages from the spec alone.  Stage 1 is the
config at ``coarse_factor`` times its voxel size on whole volumes; stage 2 is the config unchanged, trained
on the box around the ground-truth labels plus ``margin_mm``, the same margin inference crops with.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from lesionseg.io.atomic import write_bytes_atomic, write_json_atomic
from lesionseg.training.config import load_config
from lesionseg.training.export import CARD, SPEC, model_id_from_config
from lesionseg.training.loop import SPLIT_RECORD, Progress, TrainResult, train


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
    resume: bool = False,
    progress: Progress | None = None,
    **stage_options: Any,
) -> list[TrainResult]:
    """Train both stages (each resumable on its own) and write ``cascade.json`` last; returns the stages run.

    ``stage_options`` go to :func:`lesionseg.training.loop.train` for each stage: ``epochs``, ``device`` and
    ``new_split``.
    """
    unknown = set(stage_options) - {"epochs", "device", "new_split"}
    if unknown:
        raise TypeError(f"train_cascade: unknown options {sorted(unknown)}")
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

        # Stage 2 trains and validates on the cases stage 1 did, even if the dataset changed in between.
        first_split = output / "stage1" / SPLIT_RECORD
        kept = None
        if name == "stage2" and first_split.is_file():
            kept = json.loads(first_split.read_text(encoding="utf-8"))
        results.append(
            train(
                dataset_dir,
                None if stage_resume else stage,
                folder,
                resume=stage_resume,
                progress=tagged,
                kept_split=kept,
                **stage_options,
            )
        )
    write_cascade_spec(output, config)
    return results


def write_cascade_spec(output: Path, config: dict[str, Any]) -> Path:
    """``OUTPUT/spec.json`` (written last: a folder with a spec is complete) and a model card for the pair."""
    from lesionseg.models.spec import load_spec, validate_spec_dict

    fine = json.loads((output / "stage2" / SPEC).read_text(encoding="utf-8"))
    coarse = json.loads((output / "stage1" / SPEC).read_text(encoding="utf-8"))
    spec = copy.deepcopy(fine)
    spec["id"] = model_id_from_config(config, output)
    spec["description"] = f"{fine['description']} (two-step cascade)".strip()
    spec["weights"]["path"] = f"stage2/{fine['weights']['path']}"
    spec["cascade"] = {"coarse_model": "stage1", "margin_mm": float(config["cascade"]["margin_mm"])}
    validate_spec_dict(spec, where="cascade spec")
    card = (
        f"# {spec['id']} {spec['version']}\n\n"
        f"A two-step cascade. Stage 1 (`stage1/`, {coarse['network']['name']} at "
        f"{coarse['preprocessing']['spacing']} mm) segments the whole volume; the image is cropped to the box around "
        f"what it finds plus {spec['cascade']['margin_mm']} mm; stage 2 (`stage2/`, {fine['network']['name']} at "
        f"{fine['preprocessing']['spacing']} mm) segments that crop. When stage 1 finds nothing, the result is "
        "empty.\n\nEach stage's own card (`stage1/model-card.md`, `stage2/model-card.md`) gives its data and "
        "validation figures.\n"
    )
    write_bytes_atomic(output / CARD, card.encode("utf-8"))
    write_json_atomic(output / SPEC, spec)
    load_spec(output / SPEC)  # the written spec must load
    return output / SPEC
