"""A tiny spleen model with the defect of MONAI's published spleen weights, trained here in about a minute.

The Medical Segmentation Decathlon's Task09 NIfTI files store their voxels LPS (i towards the patient's left,
j posterior) while their header says RAS (Project-MONAI/model-zoo#766).  A pipeline that trusts the header
(MONAI's ``Orientationd(RAS)`` leaves such a file as it is) so trains a network on mirrored anatomy.
``write_decathlon_nifti`` writes a phantom that way; ``train_decathlon_spleen`` trains the way the bundle was
trained, on those files read with their header believed.

The phantoms are the project's anatomy (``lesionseg.data.phantom``) in the portal venous phase, where spleen
and liver have the same density: the network has to tell the spleen by where it lies, as a real model does,
which is what makes the mirrored input land on the liver.  Every grid is centred on the body's midline, so a
flip of tensor axes i and j mirrors the patient left-right and front-back.

Synthetic phantoms only, not patient data.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from importlib import resources
from pathlib import Path

import numpy as np

from lesionseg.data.phantom import sample_phantom
from lesionseg.data.shapes import Canvas
from lesionseg.data.study import add_blur_and_noise, case_streams
from lesionseg.data.tissues import LABEL
from lesionseg.image import Image

MODEL_SPACING = (6.0, 6.0, 6.0)
MODEL_SHAPE_IJK = (80, 64, 32)  # 474 x 378 x 186 mm: the upper abdomen, liver and spleen whole
# The unseen phantom: a finer grid over the same field, resampling to exactly the model's grid (80 x 64 x 32)
TEST_SPACING = (4.0, 4.0, 4.8)
TEST_SHAPE_IJK = (120, 96, 40)
TRAINING_SEEDS = tuple(range(12))
UNSEEN_SEED = 1009
TRAINING = {"steps": 300, "batch": 2, "lr": 3e-3, "seed": 0}
NETWORK = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [8, 16, 32, 64],
    "strides": [2, 2, 2],
    "num_res_units": 1,
    "norm": "batch",
}


def upper_abdomen(seed: int, spacing=MODEL_SPACING, shape_ijk=MODEL_SHAPE_IJK) -> tuple[Image, Image]:
    """(CT in HU, phantom labels: ``tissues.LABEL``) of phantom ``seed``, stored LPS, centred on the midline at
    the spleen's height."""
    streams = case_streams(seed, 0)
    phantom = sample_phantom(streams["anatomy"], "portal_venous")
    spleen = next(layer for layer in phantom.soft_layers if layer.name == "spleen").solid.keep
    marks = phantom.landmarks
    centre = np.array([0.0, (marks["body_front"] + marks["body_back"]) / 2.0, spleen.centre[2]])
    step, size = np.asarray(spacing, float), np.asarray(shape_ijk)
    canvas = Canvas(centre - step * (size - 1) / 2.0, step, tuple(int(n) for n in size[::-1]))
    phantom.render(canvas)
    add_blur_and_noise(canvas.hu, step, 2.0, 10.0, streams["noise"])
    image = Image(np.rint(canvas.hu).astype(np.int16), step, canvas.origin)
    return image, image.with_array(canvas.label)


def decathlon_style(image: Image) -> Image:
    """``image`` (stored LPS) as Decathlon wrote it: the same voxel array, a header claiming i right, j anterior."""
    if not np.allclose(image.direction, np.eye(3)):
        raise ValueError("decathlon_style needs an image stored LPS (identity direction)")
    return Image(image.array, image.spacing, image.origin, np.diag([-1.0, -1.0, 1.0]))


def write_decathlon_nifti(image: Image, path: Path) -> Path:
    from lesionseg.io import write_image

    return write_image(decathlon_style(image), path)


def mirrored(mask: np.ndarray) -> np.ndarray:
    """A (k, j, i) mask flipped along i and j: where a network fed mirrored axes puts it."""
    return np.ascontiguousarray(mask[:, ::-1, ::-1])


def spec_dict(quirk: str | None = None) -> dict:
    """The built-in spleen spec, orientation quirk included, around the tiny network and its 6 mm grid."""
    text = resources.files("lesionseg.resources").joinpath("models/spleen_ct_segmentation.json").read_text()
    spec = json.loads(text)
    spec.update(id="decathlon-spleen-tiny", version="0.0.1", description="tiny Decathlon-style spleen model (test)")
    spec["network"]["parameters"] = copy.deepcopy(NETWORK)
    spec["preprocessing"]["spacing"] = list(MODEL_SPACING)
    if quirk is not None:
        spec["preprocessing"]["orientation_quirk"] = quirk
    spec["inference"].update(roi_size=list(MODEL_SHAPE_IJK), overlap=0.25, sw_batch_size=1, amp=False)
    spec["weights"] = {"format": "state_dict", "path": "model.pt", "sha256": None}
    return spec


def _recipe_key() -> str:
    """Changes whenever the training data or recipe could: this file's text and the phantom generator's."""
    digest = hashlib.sha256()
    for module in ("phantom.py", "shapes.py", "study.py", "tissues.py"):
        digest.update(resources.files("lesionseg.data").joinpath(module).read_bytes())
    digest.update(Path(__file__).read_bytes())
    import torch

    digest.update(torch.__version__.encode())
    return digest.hexdigest()[:16]


def train_decathlon_spleen(folder: Path) -> dict:
    """Write the training phantoms the Decathlon way into ``folder``, train on them as the bundle was trained."""
    import torch

    from lesionseg.io import read_image
    from lesionseg.orientation import reorient

    images, labels = [], []
    for seed in TRAINING_SEEDS:
        ct, phantom_labels = upper_abdomen(seed)
        spleen = phantom_labels.with_array((phantom_labels.array == LABEL["spleen"]).astype(np.uint8))
        case = folder / f"spleen_{seed:02d}"
        write_decathlon_nifti(ct, case / "image.nii.gz")
        write_decathlon_nifti(spleen, case / "label.nii.gz")
        # As MONAI's LoadImage + Orientationd(RAS): the header is believed, so nothing moves
        ct_seen = reorient(read_image(case / "image.nii.gz"), "RAS")
        label_seen = reorient(read_image(case / "label.nii.gz"), "RAS")
        scaled = np.clip((ct_seen.array.astype(np.float32) + 57.0) / 221.0, 0.0, 1.0)
        images.append(torch.from_numpy(scaled).permute(2, 1, 0)[None])  # (k, j, i) array -> [channel, i, j, k]
        labels.append(torch.from_numpy(label_seen.array.astype(np.int64)).permute(2, 1, 0)[None])
    x, y = torch.stack(images), torch.stack(labels)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same weights on every machine (reductions split over threads round differently)
    try:
        return _fit(x, y)
    finally:
        torch.set_num_threads(threads)


def _fit(x, y) -> dict:
    import torch
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    torch.manual_seed(TRAINING["seed"])
    rng = np.random.default_rng(TRAINING["seed"])
    net = UNet(**NETWORK)
    optimizer = torch.optim.Adam(net.parameters(), lr=TRAINING["lr"])
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    net.train()
    for _ in range(TRAINING["steps"]):
        batch = rng.choice(len(x), TRAINING["batch"], replace=False)
        optimizer.zero_grad()
        loss_fn(net(x[batch]), y[batch]).backward()
        optimizer.step()
    net.eval()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def cached_decathlon_spleen_state(cache_root: Path, work: Path) -> dict:
    """The trained state, from ``cache_root/<recipe key>.pt`` when an earlier run left it there."""
    import torch

    cached = cache_root / f"decathlon-spleen-{_recipe_key()}.pt"
    if cached.is_file():
        try:
            return torch.load(cached, weights_only=True)
        except Exception:  # a half-written or foreign file: train again and replace it
            pass
    state = train_decathlon_spleen(work)
    cache_root.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(f"{cached.name}.{os.getpid()}.part")
    torch.save(state, partial)
    os.replace(partial, cached)  # atomic: a concurrent session reads the old file or the whole new one
    return state
