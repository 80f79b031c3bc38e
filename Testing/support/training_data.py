"""Small synthetic CT-like cases for dataset and training tests: bright spheres in noisy soft tissue."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lesionseg.image import Image

ORGAN, LESION = 1, 2


def sphere_case(
    seed: int, size: int = 32, spacing: float = 2.0, lesion: bool = True, organ_radius_mm: float = 18.0
) -> tuple[Image, Image]:
    """(CT image in HU, labelmap: 1 organ sphere, 2 a dark lesion inside it when ``lesion``)."""
    rng = np.random.default_rng(seed)
    k, j, i = np.indices((size, size, size)).astype(np.float64) * spacing
    extent = size * spacing
    centre = rng.uniform(0.4, 0.6, 3) * extent
    radius = organ_radius_mm * rng.uniform(0.85, 1.15)
    organ = (i - centre[0]) ** 2 + (j - centre[1]) ** 2 + (k - centre[2]) ** 2 <= radius**2
    label = organ.astype(np.uint8)
    hu = rng.normal(40.0, 15.0, label.shape)  # soft tissue
    hu[organ] = rng.normal(120.0, 15.0, int(organ.sum()))
    if lesion:
        offset = rng.normal(0, 1, 3)
        offset *= radius * 0.4 / np.linalg.norm(offset)
        spot = centre + offset
        small = (i - spot[0]) ** 2 + (j - spot[1]) ** 2 + (k - spot[2]) ** 2 <= (radius * 0.35) ** 2
        label[small & organ] = LESION
        hu[small & organ] = rng.normal(-20.0, 15.0, int((small & organ).sum()))
    origin = rng.uniform(-50, 50, 3)
    image = Image(hu.astype(np.int16), spacing=(spacing,) * 3, origin=origin)
    return image, image.with_array(label)


def write_sphere_cases(folder: Path, count: int, seed: int = 0, size: int = 32, lesion_every: int = 1) -> list[Path]:
    """Write cases as folders ``case_N/image.nii.gz`` + ``label.nii.gz`` + ``labels.json``; returns the folders."""
    import json

    from lesionseg.io import write_image

    out = []
    for n in range(count):
        image, label = sphere_case(seed + n, size=size, lesion=(n % lesion_every == 0))
        case = folder / f"case_{n}"
        write_image(image, case / "image.nii.gz")
        write_image(label, case / "label.nii.gz")
        (case / "labels.json").write_text(
            json.dumps([{"value": ORGAN, "name": "Organ"}, {"value": LESION, "name": "Lesion"}]), encoding="utf-8"
        )
        out.append(case)
    return out


def sphere_dataset_folder(root: Path, cases: int = 4, provenance: dict | None = None) -> Path:
    """A curated dataset of ``cases`` 32³ sphere phantoms with an organ and a lesion label."""
    from lesionseg.datasets import add_case, init_dataset

    init_dataset(root, {ORGAN: "organ", LESION: "lesion"}, name="Spheres", lesion_labels=[LESION])
    for seed in range(cases):
        add_case(root, *sphere_case(seed, size=32), case_id=f"s{seed}", provenance=provenance)
    return root


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tests that train run on one thread (stable timings beside other tests), then restore torch's setting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
