"""Training crops centred on connected pieces of the label, each piece as likely as any other.

MONAI's ``RandCropByPosNegLabeld`` centres a positive crop on a foreground voxel drawn uniformly, so a lesion is
drawn in proportion to its volume: in the demo phantoms a 50 cm³ bone lesion a hundred times as often as a
0.5 cm³ node, which the network then hardly sees.  ``augmentation.sampling: components`` draws a piece first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from monai.transforms import Randomizable, SpatialCrop


class RandCropByComponentd(Randomizable):
    """``positive`` : ``negative`` crops centred on a connected piece of one label value, or on background.

    A piece is chosen uniformly among every connected piece of every label value, then a voxel in it; a
    background centre is a voxel of label 0 inside the image.  A volume without foreground gets background crops
    only.  Its random state is MONAI's (``self.R``), so ``Compose`` seeds it and a resumed training restores it.
    """

    def __init__(self, keys: Sequence[str], patch_size: Sequence[int], samples: int, positive: float, negative: float):
        self.keys = tuple(keys)
        self.patch_size = [int(n) for n in patch_size]
        self.samples = samples
        self.positive_share = positive / (positive + negative)

    def randomize(self, data: Any = None) -> None:
        """Nothing to draw ahead: each crop draws its centre in ``__call__``."""

    @staticmethod
    def pieces(label: np.ndarray) -> list[np.ndarray]:
        """Each connected piece (face-connected) of each label value, as its voxels' indices."""
        from scipy import ndimage

        out = []
        for value in np.unique(label):
            if value == 0:
                continue
            numbered, _ = ndimage.label(label == value)
            for index, box in enumerate(ndimage.find_objects(numbered), start=1):
                if box is not None:
                    out.append(np.argwhere(numbered[box] == index) + np.array([s.start for s in box]))
        return out

    def centre(self, label: np.ndarray, image: np.ndarray, pieces: list[np.ndarray]) -> np.ndarray:
        if pieces and self.R.random_sample() < self.positive_share:
            piece = pieces[self.R.randint(len(pieces))]
            return piece[self.R.randint(len(piece))]
        # Background inside the image (above its lowest value, as pos_neg's image_threshold 0 asks): most of
        # a volume, so a few draws find it.
        floor = image.min()
        for _ in range(200):
            point = tuple(self.R.randint(n) for n in label.shape)
            if label[point] == 0 and image[point] > floor:
                return np.array(point)
        return np.array([n // 2 for n in label.shape])

    def box(self, point: np.ndarray, shape: Sequence[int]) -> list[slice]:
        """The patch around ``point``, shifted to lie inside the volume (from 0 where the volume is smaller)."""
        start = [
            max(0, min(int(p) - size // 2, n - size)) for p, size, n in zip(point, self.patch_size, shape, strict=True)
        ]
        return [slice(a, min(n, a + size)) for a, size, n in zip(start, self.patch_size, shape, strict=True)]

    def __call__(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        # The centres are drawn on the CPU; the crops are cut from the tensors where they are (the GPU when
        # training runs there: random_transforms moves them before this crop).
        label, image = _on_cpu(data["label"])[0], _on_cpu(data["image"])[0]
        pieces = self.pieces(label)
        crops = []
        for _ in range(self.samples):
            crop = SpatialCrop(roi_slices=self.box(self.centre(label, image, pieces), label.shape))
            crops.append({**data, **{key: crop(data[key]) for key in self.keys}})
        return crops


def _on_cpu(array: Any) -> np.ndarray:
    """A NumPy copy of a (possibly CUDA) tensor, or the array itself."""
    return array.detach().cpu().numpy() if hasattr(array, "detach") else np.asarray(array)
