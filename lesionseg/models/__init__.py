"""Model specs, the model registry, safe weight loading and verified downloads."""

from lesionseg.models.bundle import is_bundle_folder, spec_from_bundle
from lesionseg.models.download import UnsafeArchiveError, download_weights, safe_extract
from lesionseg.models.network import build_network, load_network
from lesionseg.models.registry import ModelEntry, ModelRegistry, builtin_specs, models_dir
from lesionseg.models.spec import ModelSpec, load_spec, spec_from_dict, spec_schema, validate_spec_dict
from lesionseg.models.weights import WeightsError, file_hashes, load_state_dict, verify_weights

__all__ = [
    "ModelEntry",
    "ModelRegistry",
    "ModelSpec",
    "UnsafeArchiveError",
    "WeightsError",
    "build_network",
    "builtin_specs",
    "download_weights",
    "file_hashes",
    "is_bundle_folder",
    "load_network",
    "load_spec",
    "load_state_dict",
    "models_dir",
    "safe_extract",
    "spec_from_bundle",
    "spec_from_dict",
    "spec_schema",
    "validate_spec_dict",
    "verify_weights",
]
