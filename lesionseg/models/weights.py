"""Loading weights without running code from them, and checking their hashes.

Only two formats are loaded: a PyTorch state_dict through ``torch.load(weights_only=True)`` (torch's restricted
unpickler: tensors, containers and numbers, nothing else) and safetensors.  There is no fallback to unsafe
loading.  TorchScript archives are refused: a TorchScript file is a program (its ``forward`` is code that runs
when the model is called), so a verified hash proves only that the program is the published one, and
``torch.jit.load`` has no mode that limits what such a program does.  Convert a TorchScript model to a
state_dict with the code that produced it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lesionseg.io.atomic import write_json_atomic

VERIFIED_RECORD = "weights.verified.json"
_CHUNK = 1 << 20


class WeightsError(ValueError):
    """Weights that are missing, altered or unsafe; the message names the file and the fix."""


def file_hashes(path: str | Path) -> dict[str, str]:
    """SHA-256 and MD5 of a file, read once."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha.update(chunk)
            md5.update(chunk)
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}


def check_hashes(path: Path, sha256: str | None, md5: str | None, hashes: Mapping[str, str] | None = None) -> dict:
    """Raise WeightsError unless every given hash matches; returns the file's hashes."""
    hashes = dict(hashes or file_hashes(path))
    for name, expected in (("sha256", sha256), ("md5", md5)):
        if expected and hashes[name] != expected.lower():
            raise WeightsError(
                f"{path}: {name} is {hashes[name]}, expected {expected}; the file is corrupt or not the published "
                "weights. Delete it and run `lesionseg models download` again"
            )
    return hashes


def read_verified_record(folder: Path) -> dict[str, Any]:
    record = folder / VERIFIED_RECORD
    if not record.exists():
        return {}
    try:
        return json.loads(record.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def write_verified_record(folder: Path, file_name: str, hashes: Mapping[str, str], source: str | None) -> None:
    write_json_atomic(folder / VERIFIED_RECORD, {"file": file_name, **dict(hashes), "source": source})


def verify_weights(spec: Any, cache: Any = None) -> dict[str, Any]:
    """Check a spec's weights file against the spec's hashes, or against the sha256 recorded at download.

    Returns the file's hashes with ``verified``: False when neither the spec nor a download record gives a
    hash to compare with (a user's own weights); a mismatch raises WeightsError. ``cache`` (a
    ``hashcache.HashCache``) supplies hashes remembered for an unchanged file; only the model list passes
    one, so loading weights to run them always reads and hashes the file itself.
    """
    path = spec.weights_path
    if path is None or not path.exists():
        raise WeightsError(
            f"model {spec.id!r}: weights not found at {path}; run `lesionseg models download {spec.id}` "
            "or put the file there"
        )
    recorded = read_verified_record(path.parent)
    sha256 = spec.weights.sha256
    if not sha256 and recorded.get("file") == path.name:
        sha256 = recorded.get("sha256")
    remembered = cache.hashes(path) if cache is not None else None
    hashes: dict[str, Any] = check_hashes(path, sha256, spec.weights.md5, remembered)
    hashes["verified"] = bool(sha256 or spec.weights.md5)
    return hashes


def _flatten_state_dict(obj: Any, path: Path) -> dict[str, Any]:
    import torch

    # Training scripts often wrap the state_dict: {"model": {...}} or {"state_dict": {...}}.
    for key in ("state_dict", "model", "network", "net"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: not a state_dict (a mapping of parameter names to tensors)")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def load_state_dict(path: str | Path, fmt: str) -> dict[str, Any]:
    """Read tensors from a weights file without executing anything in it."""
    path = Path(path)
    if fmt == "torchscript":
        raise WeightsError(
            f"{path}: TorchScript weights are refused: a TorchScript archive is a program, and torch.jit.load "
            "cannot load it without running its code. Export a state_dict (torch.save(model.state_dict())) "
            "or safetensors file and set weights.format accordingly"
        )
    if fmt == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as error:  # safetensors raises its own error types for bad headers
            raise WeightsError(f"{path}: not a readable safetensors file ({error})") from error
    if fmt != "state_dict":
        raise WeightsError(f"{path}: unknown weights format {fmt!r}; use state_dict or safetensors")
    import pickle
    import zipfile

    import torch

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(name.endswith("/constants.pkl") or name.endswith("/code/") for name in archive.namelist()):
                raise WeightsError(
                    f"{path}: this is a TorchScript archive, not a state_dict; TorchScript is refused "
                    "(it is a program). Save model.state_dict() instead"
                )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise WeightsError(
            f"{path}: refused: the checkpoint holds Python objects other than tensors (a pickle payload), "
            f"which could run code when loaded. Save only model.state_dict(). Detail: {str(error).splitlines()[0]}"
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({error})") from error
    return _flatten_state_dict(obj, path)
