"""Where models come from: built-in specs, the per-user models folder, or a folder given on the command line.

* Built-in specs are package data in ``lesionseg/resources/models/*.json``; their weights are installed into
  ``<models dir>/<id>/`` by ``lesionseg models download``.
* User models are folders ``<models dir>/<id>/`` holding ``spec.json``, the weights, and optionally
  ``model-card.md``.  A user folder with the id of a built-in model overrides it.
* The models dir is the ``models_dir`` argument, else ``$LESIONSEG_MODELS_DIR``, else ``~/.lesionseg/models``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from lesionseg.models.bundle import is_bundle_folder, spec_from_bundle
from lesionseg.models.hashcache import BackgroundHasher, HashCache, is_large
from lesionseg.models.spec import ModelSpec, load_spec, spec_from_dict
from lesionseg.models.weights import WeightsError, verify_weights

ENV_MODELS_DIR = "LESIONSEG_MODELS_DIR"


def models_dir(explicit: str | Path | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_MODELS_DIR)
    return Path(env).expanduser() if env else Path.home() / ".lesionseg" / "models"


def builtin_specs() -> list[ModelSpec]:
    """Specs shipped with LesionSeg: ``models/<id>.json`` (weights downloaded on demand) and
    ``models/<id>/spec.json`` folders that ship their weights (the small demo models)."""
    import json

    folder = resources.files("lesionseg.resources").joinpath("models")
    out = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            data = json.loads(entry.read_text(encoding="utf-8"))
            out.append(spec_from_dict(data, where=f"built-in spec {entry.name}"))
        elif entry.is_dir() and entry.joinpath("spec.json").is_file():
            out.append(load_spec(Path(str(entry)) / "spec.json"))
    return out


@dataclass(frozen=True)
class ModelEntry:
    spec: ModelSpec
    origin: str  # "built-in" or "user"
    weights_present: bool
    verified: bool | None  # None: present but no hash to check against; False: mismatch or missing
    problem: str = ""
    pending: bool = False  # its weights are being hashed in the background; ask again when that is done


class ModelRegistry:
    def __init__(self, models_dir_: str | Path | None = None):
        self.root = models_dir(models_dir_)
        self.problems: dict[str, str] = {}  # user folders that could not be read, with the reason

    def _user_specs(self) -> list[ModelSpec]:
        out = []
        if not self.root.is_dir():
            return out
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            try:
                if (folder / "spec.json").is_file():
                    out.append(load_spec(folder / "spec.json"))
                elif is_bundle_folder(folder):
                    out.append(spec_from_bundle(folder))
            except ValueError as error:  # one broken folder must not hide the others
                self.problems[folder.name] = str(error)
        return out

    def specs(self) -> dict[str, ModelSpec]:
        found: dict[str, ModelSpec] = {}
        for spec in builtin_specs():
            # Shipped folders keep their weights beside the spec; the others install into the models dir.
            found[spec.id] = replace(spec, folder=spec.folder or self.root / spec.id, builtin=True)
        for spec in self._user_specs():
            found[spec.id] = spec
        return found

    def get(self, model: str | Path) -> ModelSpec:
        """A spec by id, or from a folder (``spec.json`` or a MONAI bundle) or a spec file path."""
        path = Path(str(model)).expanduser()
        if path.is_dir():
            if (path / "spec.json").is_file():
                return load_spec(path / "spec.json")
            if is_bundle_folder(path):
                return spec_from_bundle(path)
            raise ValueError(f"{path}: neither a model folder (spec.json) nor a MONAI bundle (configs/inference.json)")
        if path.suffix == ".json" and path.is_file():
            return load_spec(path)
        specs = self.specs()
        if str(model) not in specs:
            known = ", ".join(sorted(specs)) or "none"
            raise ValueError(f"unknown model {str(model)!r}; known models: {known}. Give an id or a model folder")
        return specs[str(model)]

    def entries(self, cache: HashCache | None = None, hasher: BackgroundHasher | None = None) -> list[ModelEntry]:
        """Every model with the state of its weights.

        With ``cache``, hashes are remembered between listings (see ``hashcache`` for what that trusts). With
        ``hasher`` too, a large weights file the cache does not know yet is handed to its thread instead of
        being read here, and its entry is ``pending`` until a later listing.
        """
        cache = hasher.cache if cache is None and hasher is not None else cache
        out = []
        for spec in self.specs().values():
            present = bool(spec.weights_path and spec.weights_path.is_file())
            verified: bool | None = False
            problem = ""
            unknown = self._unhashed_large_files(spec, hasher) if present and hasher is not None else []
            if unknown:
                hasher.submit(unknown)
                out.append(ModelEntry(spec, "built-in" if spec.builtin else "user", present, None, "", pending=True))
                continue
            if present:
                try:
                    verified = True if verify_weights(spec, cache)["verified"] else None
                    coarse = spec.coarse_spec()
                    if coarse is not None and not verify_weights(coarse, cache)["verified"]:
                        verified = None  # the pair is only as verified as its less verified stage
                except WeightsError as error:
                    problem = str(error)
                except (ValueError, OSError) as error:  # a cascade whose coarse stage is missing or unreadable
                    verified, problem = False, f"coarse stage: {error}"
            out.append(ModelEntry(spec, "built-in" if spec.builtin else "user", present, verified, problem))
        return out

    @staticmethod
    def _unhashed_large_files(spec: ModelSpec, hasher: BackgroundHasher) -> list[Path]:
        files = [spec.weights_path]
        try:
            coarse = spec.coarse_spec()
        except (ValueError, OSError):
            coarse = None  # entries() reports it
        if coarse is not None and coarse.weights_path is not None:
            files.append(coarse.weights_path)
        large = [f for f in files if f.is_file() and is_large(f, hasher.threshold_bytes)]
        return [f for f in large if hasher.cache.lookup(f) is None]
