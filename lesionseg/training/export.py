"""Writing a trained network as a registry model folder: spec.json, weights, training record, model card."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lesionseg.io.atomic import atomic_path, write_bytes_atomic, write_json_atomic
from lesionseg.labels import LabelInfo

WEIGHTS = "model.pt"
SPEC = "spec.json"
TRAINING_RECORD = "training.json"
CARD = "model-card.md"


def model_id_from_config(config: dict[str, Any], output: Path) -> str:
    wanted = config["model"]["id"] or output.name
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", wanted).strip("-.") or "trained-model"
    return slug[:64]


def build_spec(
    config: dict[str, Any],
    model_id: str,
    net_name: str,
    net_params: dict[str, Any],
    labels: dict[int, str],
    weights_sha256: str,
    dataset: dict[str, Any],
) -> dict[str, Any]:
    """The model spec (``lesionseg/resources/model-spec.schema.json``) of a trained network."""
    pre = config["preprocessing"]
    intensity = dict(pre["intensity"])
    spec = {
        "schema_version": 1,
        "id": model_id,
        "version": config["model"]["version"],
        "description": config["model"]["description"] or f"Trained by lesionseg train on dataset {dataset['name']}",
        "network": {"name": net_name, "parameters": net_params},
        "input_channels": int(net_params.get("in_channels", 1)) // max(1, len(pre["windows"])),
        **_inputs(dataset.get("channels", [])),
        "preprocessing": {
            "orientation": pre["orientation"],
            "orientation_quirk": "none",
            "spacing": None if pre["spacing"] is None else [float(v) for v in pre["spacing"]],
            "intensity": intensity,
            **({"windows": [[float(lo), float(hi)] for lo, hi in pre["windows"]]} if pre["windows"] else {}),
        },
        "inference": {
            "roi_size": [int(v) for v in config["augmentation"]["patch_size"]],
            "overlap": float(config["validation"]["overlap"]),
            "sw_batch_size": int(config["validation"]["sw_batch_size"]),
            "blend": "constant",
            "amp": bool(config["training"]["amp"]),
            "tta": trained_flips(config),
        },
        "postprocessing": {},
        "labels": [LabelInfo(v, labels[v], LabelInfo.default(v).color).to_dict() for v in sorted(labels) if v],
        "lesion_labels": sorted(int(v) for v in dataset.get("lesion_labels", []) if v and v in labels),
        "weights": {
            "format": "state_dict",
            "path": WEIGHTS,
            "sha256": weights_sha256,
            "note": f"training record in {TRAINING_RECORD}; dataset manifest sha256 {dataset['manifest_sha256']}",
        },
    }
    try:
        from lesionseg.models.spec import validate_spec_dict
    except ImportError:  # the model registry is optional for training itself
        return spec
    validate_spec_dict(spec, where="trained model spec")
    return spec


def trained_flips(config: dict[str, Any]) -> list[str]:
    """The flips ``segment --uncertainty tta`` may run: the axes the training mirrored its crops along (each with
    ``augmentation.flip_prob``), none when it never flipped (a network that never saw mirrored images can be
    wrong on them)."""
    if not config["augmentation"]["flip_prob"] > 0:
        return []
    return ["i", "j"] if config["network"]["slice_mode"] else ["i", "j", "k"]


def _inputs(channels: list[str]) -> dict[str, Any]:
    """The spec's ``inputs`` of a multi-channel dataset (names, and the DICOM modality a name states); none for one."""
    if len(channels) < 2:
        return {}
    from lesionseg.inference.channels import channel_modality

    listed = []
    for name in channels:
        modality = channel_modality(name)
        listed.append({"name": name, **({"modality": modality} if modality else {})})
    return {"inputs": listed}


def write_model_folder(
    output: Path,
    config: dict[str, Any],
    net_name: str,
    net_params: dict[str, Any],
    weights: dict[str, Any],
    labels: dict[int, str],
    dataset: dict[str, Any],
    history: list[dict[str, Any]],
    best: dict[str, Any] | None,
    run: dict[str, Any],
) -> Path:
    """Weights first, then the record and card, then the spec last: a folder with a spec is complete."""
    import monai
    import torch

    with atomic_path(output / WEIGHTS) as tmp:
        torch.save({k: v.detach().cpu() for k, v in weights.items()}, tmp)
    digest = hashlib.sha256((output / WEIGHTS).read_bytes()).hexdigest()
    model_id = model_id_from_config(config, output)
    spec = build_spec(config, model_id, net_name, net_params, labels, digest, dataset)
    last = history[-1]
    record = {
        "model_id": model_id,
        "finished": datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "dataset": {
            "name": dataset["name"],
            "path": dataset["root"],
            "manifest_sha256": dataset["manifest_sha256"],
            "split": dataset["split"],
            "train_cases": dataset["train_ids"],
            "validation_cases": dataset["validation_ids"],
        },
        "weights_sha256": digest,
        "weights_from_epoch": best["epoch"] if best else last["epoch"],
        "best": best,
        "last": last,
        "epochs": last["epoch"],
        "config": config,
        "run": run,
        "software": {"torch": torch.__version__, "monai": monai.__version__},
    }
    write_json_atomic(output / TRAINING_RECORD, record)
    write_bytes_atomic(output / CARD, model_card(spec, record, labels).encode("utf-8"))
    write_json_atomic(output / SPEC, spec)
    return output / SPEC


def _channel_lines(spec: dict[str, Any]) -> list[str]:
    inputs = spec.get("inputs", [])
    if not inputs:
        return []
    names = ", ".join(each["name"] for each in inputs)
    further = (
        "z-scored over its own volume"
        if spec["preprocessing"]["intensity"]["kind"] == "range"
        else "scaled the same way, each over its own volume"
    )
    return [
        f"- Input channels, in order: {names}; segment takes `--input` once per channel (or `--channel NAME=PATH`).",
        f"  The intensity above is the first channel's; every further channel is {further}.",
        "  Further channels are resampled linearly onto the first one's grid, which the labelmap lies on.",
    ]


def model_card(spec: dict[str, Any], record: dict[str, Any], labels: dict[int, str]) -> str:
    data = record["dataset"]
    best = record["best"]
    pre = spec["preprocessing"]
    spacing = f"{pre['spacing']} mm" if pre["spacing"] else "as input"
    lines = [
        f"# {spec['id']} {spec['version']}",
        "",
        spec["description"],
        "",
        "## Training data",
        f"- Dataset **{data['name']}** ({data['path']}), manifest SHA-256 `{data['manifest_sha256']}`;",
        "  the manifest lists every case version with its file hashes and provenance, so this exact data can be named.",
        f"- Training cases ({len(data['train_cases'])}): {', '.join(data['train_cases'])}.",
        f"- Validation cases ({len(data['validation_cases'])}): {', '.join(data['validation_cases']) or 'none'}; "
        f"split: {data['split']}.",
        f"- Labels: {', '.join(f'{v} = {n}' for v, n in sorted(labels.items()) if v)}.",
        "",
        "## Model",
        f"- Network: MONAI {spec['network']['name']}, patch {spec['inference']['roi_size']}.",
        f"- Preprocessing: orientation {pre['orientation']}, spacing {spacing}, intensity {pre['intensity']}.",
        *_channel_lines(spec),
        f"- Weights: `{spec['weights']['path']}` (state_dict), SHA-256 `{record['weights_sha256']}`, from epoch "
        f"{record['weights_from_epoch']} of {record['epochs']}.",
        "",
        "## Results",
    ]
    if best:
        lines.append(
            f"- Best validation Dice (mean over labels): {best['dice_mean']:.4f} at epoch {best['epoch']}; "
            f"per label {json.dumps(best['dice'])}."
        )
        if best.get("dice_pooled") is not None:
            lines.append(
                f"- Pooled over all validation voxels at that epoch: {json.dumps(best['dice_pooled'])} "
                f"(the checkpoint was chosen by {record['config']['validation']['select']})."
            )
        lines.append(
            "- Validation Dice is measured in the preprocessed space on whole volumes (sliding window);"
            " an empty ground truth scores 1 only when nothing is predicted."
        )
    else:
        lines.append("- No validation cases: this model has no held-out accuracy figure.")
    lines += [
        f"- Final training loss {record['last']['loss']:.4f}; per-epoch figures in `metrics.jsonl`.",
        "",
        "## Intended use",
        "Research use. Not a medical device. Check every result before use; accuracy outside data like the",
        "training data above is unknown.",
        "",
    ]
    return "\n".join(lines)
