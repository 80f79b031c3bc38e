"""Building a spec's network from ``monai.networks.nets`` and putting its weights in."""

from __future__ import annotations

from typing import Any

from lesionseg.models.spec import NETWORK_NAMES, ModelSpec
from lesionseg.models.weights import WeightsError, load_state_dict, verify_weights


def build_network(name: str, parameters: dict[str, Any]) -> Any:
    """A MONAI network by class name; only the architectures a spec may name are reachable."""
    if name not in NETWORK_NAMES:
        raise ValueError(f"network {name!r} is not supported; use one of {', '.join(NETWORK_NAMES)}")
    from monai.networks import nets

    try:
        return getattr(nets, name)(**parameters)
    except TypeError as error:
        raise ValueError(f"network {name}: bad parameters ({error}); check the spec's network.parameters") from error


def load_network(spec: ModelSpec, verify: bool = True) -> Any:
    """The spec's network in eval mode with its verified weights (on the CPU)."""
    if verify:
        verify_weights(spec)
    network = build_network(spec.network_name, spec.network_parameters)
    state = load_state_dict(spec.weights_path, spec.weights.format)
    result = network.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(
            f"model {spec.id!r}: the weights do not fit the {spec.network_name} in the spec "
            f"(missing {list(result.missing_keys)[:3]}, unexpected {list(result.unexpected_keys)[:3]}); "
            "the network parameters or the weights file are wrong"
        )
    return network.eval()
