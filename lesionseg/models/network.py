"""Building a spec's network from ``monai.networks.nets`` and putting its weights in."""

from __future__ import annotations

from typing import Any

from lesionseg.models.spec import NETWORK_NAMES, ModelSpec
from lesionseg.models.weights import WeightsError, load_state_dict, verify_weights


def build_network(name: str, parameters: dict[str, Any], source: str = "the spec's network.parameters") -> Any:
    """A MONAI network by class name; only the architectures a spec may name are reachable.

    Training and inference both build through here, so a trained network is one a spec can name. ``source`` says
    in the error where the parameters came from.
    """
    if name not in NETWORK_NAMES:
        raise ValueError(f"network {name!r} is not supported; use one of {', '.join(NETWORK_NAMES)}")
    from monai.networks import nets

    try:
        return getattr(nets, name)(**parameters)
    except (TypeError, ValueError, AssertionError) as error:
        raise ValueError(f"network {name}: bad parameters ({error}); check {source}") from error


def load_network(spec: ModelSpec, verify: bool = True) -> Any:
    """The spec's network in eval mode with its verified weights (on the CPU)."""
    if verify:
        verify_weights(spec)
    network = build_network(spec.network_name, spec.network_parameters)
    state = load_state_dict(spec.weights_path, spec.weights.format)
    try:
        result = network.load_state_dict(state, strict=False)
    except RuntimeError as error:  # torch's size-mismatch report: one line per tensor
        raise WeightsError(
            f"model {spec.id!r}: the weights in {spec.weights_path} do not fit the {spec.network_name} in the spec "
            f"({str(error).strip().splitlines()[-1].strip()}); fix the spec's network parameters (channels, "
            "labels) or give the weights trained with it"
        ) from error
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(
            f"model {spec.id!r}: the weights do not fit the {spec.network_name} in the spec "
            f"(missing {list(result.missing_keys)[:3]}, unexpected {list(result.unexpected_keys)[:3]}); "
            "the network parameters or the weights file are wrong"
        )
    return network.eval()
