"""From a training config to the network name and parameters a model spec stores."""

from __future__ import annotations

from typing import Any


def network_parameters(config: dict[str, Any], out_channels: int, in_channels: int = 1) -> dict[str, Any]:
    """Plain-JSON keyword arguments for ``monai.networks.nets.<name>``; the spec stores exactly these."""
    net = config["network"]
    name = net["name"]
    patch = [int(v) for v in config["augmentation"]["patch_size"]]
    slice_mode = net["slice_mode"]
    kernel = [3, 3, 1] if slice_mode else [3, 3, 3]
    norm = "batch" if net["norm"] == "batch" else ("instance" if net["norm"] == "instance" else None)

    def stride(s: int) -> list[int] | int:
        return [s, s, 1] if slice_mode else s

    if name == "UNet":
        params: dict[str, Any] = {
            "spatial_dims": 3,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "channels": [int(c) for c in net["channels"]],
            "strides": [stride(int(s)) for s in net["strides"]],
            "num_res_units": int(net["num_res_units"]),
            "dropout": float(net["dropout"]),
        }
        if slice_mode:
            params["kernel_size"] = kernel
            params["up_kernel_size"] = kernel
        if norm:
            params["norm"] = norm
    elif name == "DynUNet":
        strides = [int(s) for s in net["strides"]]
        if len(strides) != len(net["channels"]):
            raise ValueError(
                f"config network: DynUNet needs one stride per level ({len(net['channels'])} channels, "
                f"{len(strides)} strides); the first stride is usually 1"
            )
        params = {
            "spatial_dims": 3,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "kernel_size": [kernel] * len(strides),
            "strides": [stride(s) for s in strides],
            "upsample_kernel_size": [stride(s) for s in strides[1:]],
            "filters": [int(c) for c in net["channels"]],
            "norm_name": norm or "instance",
            "dropout": float(net["dropout"]) or None,
            "res_block": True,
        }
        if net["deep_supervision"]:
            params.update(deep_supervision=True, deep_supr_num=int(net["deep_supervision"]))
    elif name == "SegResNet":
        params = {
            "spatial_dims": 3,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "init_filters": int(net["channels"][0]),
            "dropout_prob": float(net["dropout"]) or None,
            "blocks_down": [1, 2, 2, 4][: max(1, len(net["strides"]) + 1)],
            "blocks_up": [1, 1, 1][: len(net["strides"])],
        }
        if norm:
            params["norm"] = norm
    elif name == "UNETR":
        params = {
            "in_channels": in_channels,
            "out_channels": out_channels,
            "img_size": patch,
            "feature_size": int(net["channels"][0]),
            "spatial_dims": 3,
            "dropout_rate": float(net["dropout"]),
            "norm_name": norm or "instance",
        }
    else:
        raise ValueError(f"config network.name: {name!r} is not supported")
    params.update(net["parameters"])
    return params


def config_network(config: dict[str, Any], out_channels: int, in_channels: int = 1) -> tuple[str, dict[str, Any], Any]:
    """(name, parameters, module) for a config, built as inference builds the spec that training writes;
    ``in_channels``: the dataset's image channels (CT and PET: 2)."""
    from lesionseg.models.network import build_network

    name = config["network"]["name"]
    params = network_parameters(config, out_channels, in_channels)
    return name, params, build_network(name, params, "the config's network section")
