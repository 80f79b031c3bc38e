"""Reading a local MONAI bundle folder (``configs/inference.json`` + ``models/model.pt``) as a model spec.

The config is read as plain JSON: the network comes from ``network_def`` and the transform and inferer
parameters from their entries.  Nothing in the config is executed: ``_target_`` may only name a class of
``monai.networks.nets`` for the network, ``$`` expressions are refused, and ``@`` references are followed
only to plain JSON values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lesionseg.models.spec import NETWORK_NAMES, ModelSpec, spec_from_dict

_NETS_PREFIXES = ("monai.networks.nets.",)
# Transforms whose effect the engine reproduces, or which change nothing for a single CT image.
_UNDERSTOOD = {
    "LoadImaged",
    "LoadImage",
    "EnsureChannelFirstd",
    "EnsureTyped",
    "ToTensord",
    "CastToTyped",
    "ToDeviced",
    "Orientationd",
    "Spacingd",
    "ScaleIntensityRanged",
    "NormalizeIntensityd",
}


def is_bundle_folder(path: Path) -> bool:
    return (Path(path) / "configs" / "inference.json").is_file()


def _resolve(value: Any, config: dict, where: str, depth: int = 0) -> Any:
    if depth > 20:
        raise ValueError(f"{where}: references nest too deeply")
    if isinstance(value, str):
        if value.startswith("$"):
            raise ValueError(
                f"{where}: refused: the bundle computes {value!r} with a Python expression; LesionSeg does not run "
                "code from configs. Replace it with a plain value"
            )
        if value.startswith("@"):
            key = value[1:]
            node: Any = config
            for part in key.split("::") if "::" in key else key.split("#"):
                if isinstance(node, list) and part.isdigit():
                    node = node[int(part)]
                elif isinstance(node, dict) and part in node:
                    node = node[part]
                else:
                    raise ValueError(f"{where}: reference {value!r} names nothing in the config")
            return _resolve(node, config, where, depth + 1)
        return value
    if isinstance(value, list):
        return [_resolve(v, config, where, depth + 1) for v in value]
    if isinstance(value, dict):
        return {k: _resolve(v, config, where, depth + 1) for k, v in value.items()}
    return value


def _network(config: dict, where: str) -> tuple[str, dict]:
    if "network_def" not in config:
        raise ValueError(f"{where}: no 'network_def' entry; a bundle must define its network there")
    net = _resolve(config["network_def"], config, where)
    if not isinstance(net, dict) or "_target_" not in net:
        raise ValueError(f"{where}: 'network_def' must be an object with a '_target_'")
    target = str(net["_target_"])
    name = target
    for prefix in _NETS_PREFIXES:
        name = name.removeprefix(prefix)
    if "." in name or name not in NETWORK_NAMES:
        raise ValueError(
            f"{where}: refused network _target_ {target!r}: only monai.networks.nets classes "
            f"({', '.join(NETWORK_NAMES)}) are built from bundles"
        )
    params = {k: v for k, v in net.items() if not k.startswith("_")}
    return name, params


def _transforms(config: dict, where: str) -> dict[str, dict]:
    """The first transform of each MONAI class in the preprocessing chain, by class name."""
    pre = config.get("preprocessing", {})
    pre = _resolve(pre, config, where)
    items = pre.get("transforms", []) if isinstance(pre, dict) else pre
    out: dict[str, dict] = {}
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and "_target_" in item:
            out.setdefault(str(item["_target_"]).rsplit(".", 1)[-1], item)
    return out


def _labels(folder: Path, out_channels: int) -> list[dict]:
    meta_path = folder / "configs" / "metadata.json"
    names: dict[int, str] = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            outputs = meta.get("network_data_format", {}).get("outputs", {})
            for output in outputs.values():
                for key, name in output.get("channel_def", {}).items():
                    if str(key).isdigit() and int(key) > 0:
                        names[int(key)] = str(name)
        except (OSError, json.JSONDecodeError, AttributeError):
            names = {}
    return [{"value": v, "name": names.get(v, f"Label_{v}")} for v in range(1, out_channels)]


def spec_from_bundle(folder: str | Path) -> ModelSpec:
    """A spec for a MONAI bundle folder, from its configs; the weights are ``models/model.pt``."""
    folder = Path(folder)
    config_path = folder / "configs" / "inference.json"
    where = str(config_path)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not valid JSON ({error})") from error
    name, params = _network(config, where)
    transforms = _transforms(config, where)
    unknown = sorted(set(transforms) - _UNDERSTOOD)
    if unknown:
        raise ValueError(
            f"{where}: the bundle's preprocessing uses {', '.join(unknown)}, which LesionSeg does not reproduce; "
            "running it without them would give wrong results. Write a spec.json for this model instead"
        )
    orientation = transforms.get("Orientationd", {}).get("axcodes", "RAS")
    spacing = transforms.get("Spacingd", {}).get("pixdim")
    mode = transforms.get("Spacingd", {}).get("mode", "bilinear")
    if mode not in ("bilinear", ["bilinear"]):
        raise ValueError(f"{where}: Spacingd mode {mode!r} is not supported for images; only bilinear is")
    scale = transforms.get("ScaleIntensityRanged")
    norm = transforms.get("NormalizeIntensityd")
    if scale is not None:
        intensity = {"kind": "range", "clip": bool(scale.get("clip", False))}
        intensity.update({k: float(scale[k]) for k in ("a_min", "a_max", "b_min", "b_max")})
    elif norm is not None:
        intensity = {"kind": "zscore", "nonzero": bool(norm.get("nonzero", False))}
    else:
        raise ValueError(f"{where}: no ScaleIntensityRanged or NormalizeIntensityd in 'preprocessing'")
    inferer = _resolve(config.get("inferer", {}), config, where)
    if "roi_size" not in inferer:
        raise ValueError(f"{where}: the 'inferer' entry gives no roi_size")
    # What the inferer leaves out takes the spec's defaults, which are MONAI's (see lesionseg.models.spec).
    inference: dict[str, Any] = {"roi_size": [int(r) for r in inferer["roi_size"]]}
    given = {"overlap": ("overlap", float), "sw_batch_size": ("sw_batch_size", int), "mode": ("blend", str)}
    for key, (field, to) in given.items():
        if key in inferer:
            inference[field] = to(inferer[key])
    out_channels = int(params.get("out_channels", 2))
    data = {
        "schema_version": 1,
        "id": folder.name,
        "version": str(_metadata_version(folder)),
        "description": f"MONAI bundle folder {folder}",
        "network": {"name": name, "parameters": params},
        "input_channels": int(params.get("in_channels", 1)),
        "preprocessing": {
            "orientation": str(orientation).upper(),
            "orientation_quirk": "none",
            "spacing": None if spacing is None else [float(s) for s in spacing],
            "intensity": intensity,
        },
        "inference": inference,
        "labels": _labels(folder, out_channels),
        "weights": {"format": "state_dict", "path": "model.pt"},
    }
    return spec_from_dict(data, folder=folder / "models", where=where)


def _metadata_version(folder: Path) -> str:
    try:
        return json.loads((folder / "configs" / "metadata.json").read_text(encoding="utf-8")).get("version", "unknown")
    except (OSError, json.JSONDecodeError, AttributeError):
        return "unknown"
