"""Small real models and phantoms for inference tests.

* ``threshold_model``: a real ``monai.networks.nets.SegResNet`` whose weights are set by hand so that its
  output is class 1 exactly where the scaled intensity exceeds a threshold.  Its answer is known for any
  input, so geometry tests can demand exact equality. It is the modules' self-test model
  (``LesionSegLib.selftest``), made from that one definition.
* ``trained_unet_state``: the spleen spec's UNet trained for a few steps on a phantom sphere, so its argmax
  is confident (a random UNet's argmax is noise, and noise makes pipeline comparisons meaningless).
* ``phantom_ct``: an analytic CT-like phantom (air, a body ellipsoid, a dense blob with smooth edges)
  sampled on any grid, so a permuted or oblique copy is a fresh sampling, not a resampled copy.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np

from lesionseg.image import Image

THRESHOLD_HU = 100.0


def threshold_spec_dict(model_id: str = "threshold", spacing=(1.5, 1.5, 2.0), roi=(32, 32, 32), **inference) -> dict:
    """The modules' self-test model (LesionSegLib.selftest), with the grid, tiles and label these tests expect."""
    # Imported here, not at the top: the benchmarks import this file for its phantoms with only Testing/ on
    # their path, while LesionSegLib lives in the repository root (on pytest's path through pyproject).
    from LesionSegLib.selftest import threshold_model_spec

    spec = threshold_model_spec(model_id, "dense", THRESHOLD_HU)
    spec["version"] = "1.0"
    spec["description"] = "hand-set SegResNet: class 1 where HU > 100"
    spec["preprocessing"]["spacing"] = None if spacing is None else list(spacing)
    # Test-time flips declared: the threshold network decides each voxel alone, so a mirrored image is as good
    # to it as the original (the edge weights' members disagree on purpose, across i).
    spec["inference"] = {
        "roi_size": list(roi),
        "overlap": 0.25,
        "sw_batch_size": 2,
        "blend": "constant",
        "tta": ["i", "j", "k"],
        **inference,
    }
    spec["labels"][0]["color"] = [0.9, 0.2, 0.1]
    return spec


def threshold_state(gain: float = 200.0) -> dict:
    """Weights that make the SegResNet above compute ``logit1 = gain * (x - t)``, ``logit0 = 0``."""
    from LesionSegLib.selftest import threshold_weights

    return threshold_weights(THRESHOLD_HU, steepness=gain)


def write_model_folder(folder: Path, spec: dict, state: dict, record_hash: bool = True) -> Path:
    """A user model folder: spec.json + weights (safetensors or state_dict), with the weights' sha256."""
    import torch
    from safetensors.torch import save_file

    from lesionseg.models.weights import file_hashes

    folder.mkdir(parents=True, exist_ok=True)
    spec = copy.deepcopy(spec)
    weights = folder / spec["weights"]["path"]
    if spec["weights"]["format"] == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    else:
        torch.save(state, weights)
    if record_hash:
        spec["weights"]["sha256"] = file_hashes(weights)["sha256"]
    (folder / "spec.json").write_text(json.dumps(spec, indent=2))
    return folder


def smooth_step(distance: np.ndarray, width_mm: float = 1.5) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-distance / width_mm))


def phantom_ct(
    shape_kji=(40, 48, 48),
    spacing=(1.5, 1.5, 2.0),
    origin=(0.0, 0.0, 0.0),
    direction=np.eye(3),
    centre_lps=None,
    blob_radii_mm=(22.0, 16.0, 18.0),
    body_radii_mm=(32.0, 30.0, 34.0),
    air_margin=True,
) -> Image:
    """An analytic phantom: air, a 0 HU body ellipsoid and a 300 HU off-centre ellipsoidal blob."""
    ref = Image(np.zeros(shape_kji, np.int16), spacing, origin, direction)
    if centre_lps is None:
        centre_lps = ref.world((np.array(ref.size) - 1) / 2.0)
    k, j, i = np.indices(shape_kji)
    lps = ref.world(np.stack([i, j, k], axis=-1).reshape(-1, 3)).reshape(*shape_kji, 3) - np.asarray(centre_lps)
    blob_offset = np.array([6.0, -4.0, 3.0])

    def ellipsoid_distance(points, radii):
        # approximate signed distance (mm) inside > 0
        return (1.0 - np.sqrt(np.sum((points / np.asarray(radii)) ** 2, axis=-1))) * min(radii)

    body = smooth_step(ellipsoid_distance(lps, body_radii_mm)) if air_margin else np.ones(shape_kji)
    blob = smooth_step(ellipsoid_distance(lps - blob_offset, blob_radii_mm))
    values = -1000.0 + 1000.0 * body + 300.0 * blob
    return ref.with_array(values.astype(np.float32))


def sphere_label(image: Image, threshold: float = THRESHOLD_HU) -> np.ndarray:
    return (image.array > threshold).astype(np.uint8)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


def spleen_network_parameters() -> dict:
    from lesionseg.models import builtin_specs

    return next(s for s in builtin_specs() if s.id == "spleen_ct_segmentation").network_parameters


def trained_unet_state(steps: int = 30, seed: int = 0, patch: int = 32) -> dict:
    """The spleen spec's UNet after ``steps`` Adam steps on random crops of a scaled phantom blob."""
    import torch
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = UNet(**spleen_network_parameters())
    # A phantom on the spleen spec's grid, scaled as the spec scales it (-57..164 HU → 0..1, clipped).
    ct = phantom_ct(shape_kji=(48, 64, 64), spacing=(1.5, 1.5, 2.0))
    scaled = np.clip((ct.array + 57.0) / 221.0, 0.0, 1.0)
    target = (ct.array > THRESHOLD_HU).astype(np.int64)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    net.train()
    for _ in range(steps):
        starts = [rng.integers(0, n - patch + 1) for n in scaled.shape]
        crop = tuple(slice(s, s + patch) for s in starts)
        x = torch.from_numpy(scaled[crop].copy()).float()[None, None].permute(0, 1, 4, 3, 2)
        y = torch.from_numpy(target[crop].copy())[None].permute(0, 3, 2, 1)
        optimizer.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        optimizer.step()
    net.eval()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def bright_ct() -> Image:
    """Soft tissue (40 HU) with a bright oblong (250 HU) and a brighter bar (500 HU) on a flipped, anisotropic grid:
    what the threshold models of the module tests segment, at 100 HU or 300 HU."""
    values = np.full((9, 20, 18), 40, np.int16)
    values[2:6, 5:14, 4:10] = 250
    values[7, 15:18, 12:16] = 500
    return Image(values, (0.9, 1.1, 2.5), (25.0, -12.0, 60.0), np.diag([-1.0, 1.0, -1.0]))


def edge_state(rise: float = 0.05, gain: float = 2400.0) -> dict:
    """Threshold-network weights that find where intensity rises along network axis i, by more than ``rise`` (0..1
    scaled) over two voxels: ``logit1 = gain * (relu(x[i+1] - x[i-1]) - rise)``.

    Mirroring along i turns a rise into a fall, so flip test-time augmentation members disagree exactly on edges
    along i, and nowhere else; ``gain * rise`` (120) is large enough that each member is certain (softmax 0 or 1
    in float32) away from an edge's rim.
    """
    weights = threshold_state()
    first = weights["convInit.conv.weight"]
    first.zero_()
    first[0, 0, 2, 1, 1] = 1.0
    first[0, 0, 0, 1, 1] = -1.0
    weights["conv_final.2.conv.weight"][1, 0] = gain
    weights["conv_final.2.conv.bias"][1] = -gain * rise
    return weights
