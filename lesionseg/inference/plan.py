"""The way from an input image to the network's input, recorded so that the network's output goes back the same way.

MONAI inverts its preprocessing (``Invertd``) by replaying in reverse the transforms each image records on the
way in.  Our way in is always the same four steps, so a :class:`NetworkPlan` holds each step's parameters:

1. reorient to the spec's axcodes exactly as MONAI's ``Orientationd`` does, oblique grids included (a lossless
   re-indexing, :mod:`.axes`);
2. resample onto the spec's spacing, on MONAI's grid, with separable linear interpolation (:mod:`.network_grid`);
3. crop to a box on that grid (the body, for ``--crop-body``);
4. mirror tensor axes i and j when the spec compensates the Decathlon orientation quirk.

:meth:`NetworkPlan.to_network` applies them to the input's voxels.  Back from the network, :meth:`~NetworkPlan.
from_network` undoes step 4 on the logits, which then become class scores on the network's grid (as MONAI's
activation runs before its inversion), and :meth:`~NetworkPlan.to_input` undoes steps 3, 2 and 1: it pastes the
crop into the whole grid, resamples the scores back in slabs while deciding each voxel's label, and undoes the
reorientation, so the labels lie on exactly the input's grid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from lesionseg.image import Image
from lesionseg.inference.axes import monai_reorientation, permute_axes, undo_permutation
from lesionseg.inference.network_grid import (
    AxisMap,
    axis_map,
    first_pass_voxels,
    grid_starts,
    interpolate_axis,
    is_axis_aligned,
    resample_array_in_slabs,
    target_shape_ijk,
)
from lesionseg.models.spec import PreprocessSpec

WHOLE = (slice(None), slice(None), slice(None))  # no crop
_SLAB = 16  # input slices resampled back at a time: bounds the memory of the inversion


@dataclass(frozen=True)
class NetworkPlan:
    """The steps from one input image to the network's input, each with what undoing it needs."""

    source: Image  # the input as given: to_input returns onto its grid
    reorientation: tuple[list[int], list[bool]]  # step 1: (source_axis, flip), as MONAI's Orientationd applies it
    reoriented: Image  # the input after step 1
    grid: Image  # step 2's target: the network grid (its voxels are a stand-in; only its geometry is used)
    forward: tuple[AxisMap, ...]  # step 2: interpolation (k, j, i) from the reoriented input onto the grid
    backward: tuple[AxisMap, ...]  # step 2 undone: from the grid back onto the reoriented input
    region: tuple[slice, slice, slice] = WHOLE  # step 3: array slices [k, j, i] of the grid fed to the network
    mirrored: bool = False  # step 4: tensor axes i and j reversed

    @classmethod
    def for_image(cls, image: Image, preprocessing: PreprocessSpec) -> NetworkPlan:
        """The plan for ``image`` under a spec's preprocessing, uncropped (see :meth:`cropped`)."""
        reorientation = monai_reorientation(image, preprocessing.orientation)
        reoriented = permute_axes(image, *reorientation)
        size_ijk, spacing = reoriented.size, reoriented.spacing
        target_spacing = np.asarray(preprocessing.spacing if preprocessing.spacing is not None else spacing, float)
        shape_ijk = target_shape_ijk(size_ijk, spacing, preprocessing.spacing)
        step = target_spacing / spacing
        start = grid_starts(size_ijk, shape_ijk, step, is_axis_aligned(reoriented.direction))
        forward = tuple(axis_map(size_ijk[a], shape_ijk[a], step[a], start[a]) for a in (2, 1, 0))
        backward = tuple(axis_map(shape_ijk[a], size_ijk[a], 1.0 / step[a], -start[a] / step[a]) for a in (2, 1, 0))
        stand_in = np.broadcast_to(np.zeros(1, dtype=np.uint8), tuple(reversed(shape_ijk)))
        grid = Image(stand_in, target_spacing, reoriented.world(start), reoriented.direction)
        mirrored = preprocessing.orientation_quirk == "compensate"
        return cls(image, reorientation, reoriented, grid, forward, backward, mirrored=mirrored)

    def cropped(self, region: tuple[slice, slice, slice]) -> NetworkPlan:
        """The same plan feeding the network only ``region`` (array slices ``[k, j, i]`` of :attr:`grid`)."""
        return replace(self, region=region)

    @property
    def first_pass_voxels(self) -> int:
        """Voxels of the float32 volume that the first resampling pass of :meth:`to_network` holds."""
        return first_pass_voxels(self.reoriented.array.shape, self.forward)

    def to_network(self, device: Any, scale: Callable[[Any, int], Any] | None = None, further: Sequence[Image] = ()):
        """The network's input ``[channels, k, j, i]`` (float32, contiguous, on ``device``): steps 1 to 4.

        ``further`` are a multi-channel model's other channels, on the input's grid: each takes the first one's way.
        ``scale(volume, channel)`` maps a channel's resampled intensities (a torch tensor on the whole grid) before
        the crop, so statistics it takes over the volume do not depend on the crop; it may give several network
        channels for one image (``[n, k, j, i]``, intensity windows).
        """
        import torch

        arrays = [self.reoriented.array, *(permute_axes(each, *self.reorientation).array for each in further)]
        volumes = []
        for channel, array in enumerate(arrays):
            volume = resample_array_in_slabs(array, self.forward, device)
            volumes.append(volume if scale is None else scale(volume, channel))
        volume = torch.cat([each if each.dim() == 4 else each[None] for each in volumes])
        del volumes
        volume = volume[(slice(None), *self.region)]
        if self.mirrored:
            volume = volume.flip(-1, -2)  # tensor axes 0 and 1 (i, j) are the last two here
        return volume.contiguous()

    def from_network(self, logits):
        """The network's output ``[classes, k, j, i]`` with step 4 undone: on :attr:`region` of the grid."""
        return logits.flip(-1, -2) if self.mirrored else logits

    def to_input(
        self,
        scores,
        outside: Sequence[float],
        decide: Callable[[Any], Any],
        progress: Callable[[float], None] | None = None,
    ) -> Image:
        """Labels (uint8) on the input's grid from per-class ``scores`` ``[channels, k, j, i]`` on :attr:`region`.

        Undoes steps 3, 2 and 1: the grid outside the region gets ``outside`` (a score per channel), the scores are
        resampled onto the reoriented input slab by slab, ``decide`` turns each slab ``[channels, k, j, i]`` into
        labels there, and the labels are re-indexed back to the input's axes.
        """
        import torch

        maps = self.to_input_maps(scores, outside, lambda slab: {"labels": decide(slab).to(torch.uint8)}, progress)
        return maps["labels"]

    def to_input_maps(
        self,
        scores,
        outside: Sequence[float],
        derive: Callable[[Any], dict[str, Any]],
        progress: Callable[[float], None] | None = None,
    ) -> dict[str, Image]:
        """Volumes on the input's grid derived from ``scores`` ``[channels, k, j, i]`` on :attr:`region`.

        As :meth:`to_input`, but ``derive`` turns each linearly resampled slab into several named tensors
        ``[k, j, i]`` (labels, or the uncertainty's float maps), each returned as an image on the input's grid.
        """
        if self.region != WHOLE:
            scores = self._uncrop(scores, outside)
        arrays = _resample_in_slabs(scores, self.backward, derive, progress)
        reoriented = self.reoriented
        maps = {}
        for name, array in arrays.items():
            derived = Image(array, reoriented.spacing, reoriented.origin, reoriented.direction)
            maps[name] = permute_axes(derived, *undo_permutation(*self.reorientation))
            if not maps[name].same_grid(self.source):
                raise RuntimeError(f"internal error: the {name} did not return to the input grid after reorientation")
        return maps

    def _uncrop(self, scores, outside: Sequence[float]):
        import torch

        whole = torch.empty((scores.shape[0], *self.grid.array.shape), dtype=torch.float32, device=scores.device)
        for channel, value in enumerate(outside):
            whole[channel].fill_(value)
        whole[(slice(None), *self.region)] = scores
        return whole


def _resample_in_slabs(
    scores,
    maps_kji: Sequence[AxisMap],
    derive: Callable[[Any], dict[str, Any]],
    progress: Callable[[float], None] | None,
) -> dict[str, np.ndarray]:
    """Resample ``scores`` with ``maps_kji`` slab by slab along k, and ``derive`` each slab's named volumes."""
    kmap, jmap, imap = maps_kji
    n_out = len(kmap.lower)
    out: dict[str, np.ndarray] = {}
    for k0 in range(0, n_out, _SLAB):
        k1 = min(k0 + _SLAB, n_out)
        first = int(kmap.lower[k0:k1].min())
        last = int(kmap.upper[k0:k1].max())
        local = AxisMap(kmap.lower[k0:k1] - first, kmap.upper[k0:k1] - first, kmap.weight[k0:k1])
        slab = interpolate_axis(scores[:, first : last + 1], 1, local)
        slab = interpolate_axis(interpolate_axis(slab, 2, jmap), 3, imap)
        for name, values in derive(slab).items():
            values = values.cpu().numpy()
            if name not in out:
                out[name] = np.zeros((n_out, *values.shape[1:]), dtype=values.dtype)
            out[name][k0:k1] = values
        if progress:
            progress(k1 / n_out)
    return out
