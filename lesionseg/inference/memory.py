"""How much memory a segmentation needs, and where its big tensors should live.

The estimate is a pure function of sizes so it can be checked with the numbers users report (a
512×512×800 CT on an 8 GB GPU or in 16 GB of RAM).  Terms, in bytes:

* network input on the target grid: ``4 · channels · voxels`` (float32; one channel per input image, or per
  intensity window of a windowed model),
* stitched output: ``4 · classes · voxels`` plus a float32 count map ``4 · voxels``,
* probabilities on the target grid after the softmax: ``4 · classes · voxels`` (freed logits are reused),
* per window in a batch: ``activation_factor · 4 · roi voxels`` for the network's activations (about 40
  feature maps of the window's size for a 16-channel 3D UNet in inference; 2 bytes each under AMP).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

GIB = 1024**3
SAFETY = 0.8  # leave room for the allocator's fragmentation and other processes


@dataclass(frozen=True)
class MemoryPlan:
    sw_batch_size: int
    stitch_on_device: bool  # False: input and stitched output live in host RAM (MONAI's device != sw_device)
    device_bytes: int
    host_bytes: int
    fits: bool
    note: str = ""
    device_fits: bool = True  # False: not even one window fits the GPU


class MemoryPlanError(ValueError):
    """The run cannot fit in the memory this process may use (a bad-input refusal: exit status 2)."""


def plan_memory(
    target_voxels: int,
    num_classes: int,
    roi_ijk: Sequence[int],
    sw_batch_size: int,
    device_type: str,
    free_device_bytes: int,
    free_host_bytes: int,
    input_voxels: int = 0,
    activation_factor: float = 40.0,
    amp: bool = True,
    input_itemsize: int = 4,
    first_pass_voxels: int = 0,
    network_channels: int = 1,
    further_input_bytes: int = 0,
) -> MemoryPlan:
    """Pick the window batch and where to stitch so the run fits; ``fits`` is False when nothing does.

    ``network_channels`` is how many channels the network takes; ``further_input_bytes`` what a multi-channel
    model's other inputs hold in RAM, already on the first input's grid.
    """
    roi_voxels = int(np.prod(roi_ijk))
    bytes_per_value = 2 if (amp and device_type == "cuda") else 4
    per_window = int(activation_factor * bytes_per_value * roi_voxels)
    # The resampled input (float32); while it is built, the first resampling pass's output is the larger buffer.
    network_input = 4 * network_channels * max(target_voxels, first_pass_voxels)
    stitched = 4 * (num_classes + 1) * target_voxels
    # The input as read, its uint8 labelmap, and a byte a voxel for post-processing's masks.
    host_base = (input_itemsize + 2) * input_voxels + further_input_bytes
    if device_type != "cuda":
        budget = int(free_host_bytes * SAFETY) - host_base - network_input - stitched
        batch = max(1, min(sw_batch_size, budget // max(per_window, 1)))
        need = host_base + network_input + stitched + batch * per_window
        return MemoryPlan(batch, True, 0, need, need <= free_host_bytes * SAFETY)
    device_budget = int(free_device_bytes * SAFETY)
    for stitch_on_device in (True, False):
        # Off the device, the resampled input stays in RAM too and windows travel to the GPU per batch.
        fixed = network_input + stitched if stitch_on_device else 0
        room = device_budget - fixed
        if room >= per_window:
            batch = max(1, min(sw_batch_size, room // per_window))
            host = host_base + (0 if stitch_on_device else stitched + network_input)
            note = "" if stitch_on_device else "stitching in host RAM: the output does not fit beside the network"
            return MemoryPlan(batch, stitch_on_device, fixed + batch * per_window, host, host <= free_host_bytes, note)
    return MemoryPlan(1, False, per_window, host_base + stitched + network_input, False, "does not fit this GPU", False)


def check_memory_plan(plan: MemoryPlan, host: Any, device_type: str, crop_body: bool) -> None:
    """Refuse, before any inference, a run that cannot fit: the figure, what bounds it, and what to do instead.

    ``host`` is a :class:`lesionseg.inference.devices.HostMemory`.  A plan that fits only without the safety
    margin still runs: the estimate is conservative, and the margin is for other processes.
    """
    remedies = [] if crop_body else ["--crop-body (the modules' Body crop) to skip the air around the body"]
    if not plan.device_fits:
        remedies.append("--device cpu")
        raise MemoryPlanError(
            f"this volume needs about {plan.device_bytes / GIB:.1f} GiB of GPU memory for one window, more than the "
            f"GPU has free; use {' or '.join(remedies)}"
        )
    if plan.host_bytes > host.available_bytes:
        remedies.append("a crop of the volume around the region of interest")
        if device_type != "cuda":
            remedies.append("a machine or job with more memory")
        raise MemoryPlanError(
            f"this volume needs about {plan.host_bytes / GIB:.1f} GiB of memory, but only "
            f"{host.available_bytes / GIB:.1f} GiB is left under {host.limited_by}; nothing was segmented. "
            f"Use {', or '.join(remedies)}"
        )
