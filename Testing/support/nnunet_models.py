"""Real nnU-Net v2 trained-configuration folders, made at test time in seconds (nothing downloaded).

``build_dataset(root)`` writes ``Dataset900_Phantom/nnUNetTrainer__nnUNetPlans__<config>/`` for ``3d_fullres``,
``2d``, ``3d_lowres`` and ``3d_cascade_fullres``: ``dataset.json``, a hand-written ``plans.json`` (one small
``PlainConvUNet`` per configuration, CT normalization, no instance norm) and ``fold_N/checkpoint_final.pth``
saved in nnU-Net's own checkpoint layout (network weights, optimizer state, logging with numpy scalars,
``init_args`` with a torch device, trainer name, mirroring axes).

The networks' weights are set by hand (``hand_set``) so that their argmax is a known classification of intensity, the
phantom's labels: a parity test that compares noise passes for the wrong reasons.  (Training a few steps took minutes
on a busy 2-core machine; hand-set weights take none.)

Phantom: soft tissue (about 40 HU) with noise; label 1 "lesion" is a sphere near 200 HU, label 2 "bone" a box near
700 HU.  Arrays are in SimpleITK order (z, y, x), as nnU-Net reads them.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASET = "Dataset900_Phantom"
TRAINER = "nnUNetTrainer"
PLANS = "nnUNetPlans"
LABELS = {"background": 0, "lesion": 1, "bone": 2}
INTENSITY = {"max": 900.0, "mean": 300.0, "median": 200.0, "min": -100.0, "percentile_00_5": -50.0,
             "percentile_99_5": 800.0, "std": 250.0}  # fmt: skip
# An image's spacing in SimpleITK's (x, y, z) order; nnU-Net's arrays and plans use (z, y, x).
IMAGE_SPACING_XYZ = (1.0, 1.0, 2.0)


def phantom(shape_zyx=(24, 40, 44), spacing_xyz=IMAGE_SPACING_XYZ, seed: int = 0, centre_mm=None):
    """(image float32 HU, labels uint8), both (z, y, x)."""
    rng = np.random.default_rng(seed)
    sz, sy, sx = spacing_xyz[2], spacing_xyz[1], spacing_xyz[0]
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape_zyx, (sz, sy, sx), strict=True)), indexing="ij")
    extent = np.array([shape_zyx[0] * sz, shape_zyx[1] * sy, shape_zyx[2] * sx])
    c = np.asarray(centre_mm if centre_mm is not None else extent * [0.5, 0.4, 0.35])
    sphere = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= (min(extent[1:]) * 0.25) ** 2
    box = (
        (np.abs(z - extent[0] * 0.5) <= max(extent[0] * 0.3, sz))
        & (np.abs(y - extent[1] * 0.7) < 5)
        & (np.abs(x - extent[2] * 0.72) < 6)
    )
    labels = np.zeros(shape_zyx, np.uint8)
    labels[sphere] = 1
    labels[box & ~sphere] = 2
    image = np.full(shape_zyx, 40.0, np.float32)
    image[labels == 1] = 200.0
    image[labels == 2] = 700.0
    image += rng.normal(0, 15, shape_zyx).astype(np.float32)
    return image, labels


def _arch(dim: int, features, strides, kernels) -> dict:
    conv = "torch.nn.modules.conv.Conv3d" if dim == 3 else "torch.nn.modules.conv.Conv2d"
    n = len(features)
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n,
            "features_per_stage": list(features),
            "conv_op": conv,
            "kernel_sizes": kernels,
            "strides": strides,
            "n_conv_per_stage": [1] * n,
            "n_conv_per_stage_decoder": [1] * (n - 1),
            "conv_bias": True,
            "norm_op": None,  # no instance norm: hand_set() gives the network a known answer
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def _resampling(order: int) -> dict:
    return {"is_seg": False, "order": order, "order_z": 0, "force_separate_z": None}


def _configuration(identifier: str, patch, spacing, arch: dict, median) -> dict:
    return {
        "data_identifier": identifier,
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": list(patch),
        "median_image_size_in_voxels": list(median),
        "spacing": list(spacing),
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": _resampling(3),
        "resampling_fn_seg_kwargs": dict(_resampling(1), is_seg=True),
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": _resampling(1),
        "architecture": arch,
        "batch_dice": False,
    }


def plans_dict() -> dict:
    k3 = [[1, 3, 3], [3, 3, 3], [3, 3, 3]]
    s3 = [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    fullres = _configuration("nnUNetPlans_3d_fullres", (16, 32, 32), (2.0, 1.0, 1.0),
                             _arch(3, (4, 8, 16), s3, k3), (24, 40, 44))  # fmt: skip
    s_low = [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    lowres = _configuration("nnUNetPlans_3d_lowres", (16, 16, 16), (4.0, 2.0, 2.0),
                            _arch(3, (4, 8, 16), s_low, [[3, 3, 3]] * 3), (12, 20, 22))  # fmt: skip
    lowres["next_stage"] = "3d_cascade_fullres"
    two_d = _configuration("nnUNetPlans_2d", (32, 32), (1.0, 1.0),
                           _arch(2, (4, 8, 16), [[1, 1], [2, 2], [2, 2]], [[3, 3]] * 3), (40, 44))  # fmt: skip
    return {
        "dataset_name": DATASET,
        "plans_name": PLANS,
        "original_median_spacing_after_transp": [2.0, 1.0, 1.0],
        "original_median_shape_after_transp": [24, 40, 44],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "2d": two_d,
            "3d_fullres": fullres,
            "3d_lowres": lowres,
            "3d_cascade_fullres": {
                "inherits_from": "3d_fullres",
                "data_identifier": "nnUNetPlans_3d_cascade_fullres",
                "previous_stage": "3d_lowres",
            },
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": dict(INTENSITY)},
    }


def dataset_dict() -> dict:
    return {"channel_names": {"0": "CT"}, "labels": dict(LABELS), "numTraining": 8, "file_ending": ".nii.gz"}


def normalize(image_hu: np.ndarray) -> np.ndarray:
    """nnU-Net's CTNormalization with this dataset's intensity properties."""
    clipped = np.clip(image_hu, INTENSITY["percentile_00_5"], INTENSITY["percentile_99_5"])
    return ((clipped - INTENSITY["mean"]) / max(INTENSITY["std"], 1e-8)).astype(np.float32)


# Normalized intensity cuts between the phantom's classes: 120 HU (tissue | lesion) and 450 HU (lesion | bone).
CUT_LESION = (120.0 - INTENSITY["mean"]) / INTENSITY["std"]
CUT_BONE = (450.0 - INTENSITY["mean"]) / INTENSITY["std"]
_SHIFT = 10.0  # keeps the passed-through intensity positive, so LeakyReLU passes it unchanged


def _zeroed_layers(network):
    """Zero every weight of a PlainConvUNet and return the three layers the hand-set networks write: the first
    encoder convolution, the last decoder convolution and the final 1x1 segmentation layer (under torch.no_grad())."""
    for parameter in network.parameters():
        parameter.zero_()
    return (
        network.encoder.stages[0][0].convs[0].conv,
        network.decoder.stages[-1].convs[0].conv,
        network.decoder.seg_layers[-1],
    )


def hand_set(network, input_channels: int, previous_stage_weight: float = 1.0) -> None:
    """Weights that make the network a known classifier of the normalized intensity.

    Every input channel is passed (plus _SHIFT) from the first encoder stage through the last decoder stage's skip
    connection; the deeper stages are zero. The final 1x1 layer gives logits linear in the intensity, so the argmax
    is background below CUT_LESION, lesion up to CUT_BONE, bone above. A cascade's one-hot previous-stage channels
    add ``previous_stage_weight`` to their class's logit, so the first stage's result matters.
    """
    import torch

    with torch.no_grad():
        first, last, seg = _zeroed_layers(network)
        features0 = first.weight.shape[0]
        for c in range(input_channels):
            first.weight[(c, c, *(k // 2 for k in first.weight.shape[2:]))] = 1.0
            first.bias[c] = _SHIFT
            # The last decoder stage sees [upsampled, skip]: the skip's channels follow the upsampled ones.
            last.weight[(c, features0 + c, *(k // 2 for k in last.weight.shape[2:]))] = 1.0
        ones = (0,) * (seg.weight.dim() - 2)
        slope1, slope2 = 4.0, 8.0
        # lesion = slope1 (x - CUT_LESION); bone - lesion = (slope2 - slope1) (x - CUT_BONE); x = v - _SHIFT
        seg.weight[(1, 0, *ones)] = slope1
        seg.bias[1] = -slope1 * (_SHIFT + CUT_LESION)
        seg.weight[(2, 0, *ones)] = slope2
        seg.bias[2] = seg.bias[1] - (slope2 - slope1) * (_SHIFT + CUT_BONE)
        for label in range(1, input_channels):
            seg.weight[(label, label, *ones)] = previous_stage_weight
            seg.bias[label] -= previous_stage_weight * _SHIFT


def expected_labels(image_hu: np.ndarray) -> np.ndarray:
    """What a hand-set single-stage network answers on an image at its own spacing (no resampling)."""
    x = normalize(image_hu)
    return np.where(x > CUT_BONE, 2, np.where(x > CUT_LESION, 1, 0)).astype(np.uint8)


def _network(plans: dict, configuration: str, input_channels: int):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    config = plans["configurations"][configuration]
    if "inherits_from" in config:
        config = dict(copy.deepcopy(plans["configurations"][config["inherits_from"]]), **config)
    arch = config["architecture"]
    return get_network_from_plans(
        arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], input_channels, len(LABELS),
        allow_init=True, deep_supervision=False,
    )  # fmt: skip


def save_checkpoint(path: Path, network, optimizer, plans: dict, dataset: dict, configuration: str, fold, loss: float,
                    mirroring=(0, 1, 2)) -> None:  # fmt: skip
    """nnU-Net's ``nnUNetTrainer.save_checkpoint`` layout, numpy scalars in ``logging`` as real ones hold."""
    import torch

    checkpoint = {
        "network_weights": network.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "grad_scaler_state": None,
        "logging": {
            "mean_fg_dice": [np.float64(0.5), np.float64(0.9)],
            "ema_fg_dice": [np.float64(0.5), np.float64(0.54)],
            "dice_per_class_or_region": [[np.float64(0.4), np.float64(0.6)]],
            "train_losses": [np.float32(loss)],
            "val_losses": [np.float32(loss)],
            "lrs": [0.01],
            "epoch_start_timestamps": [1.0],
            "epoch_end_timestamps": [2.0],
        },
        "_best_ema": np.float64(0.54),
        "current_epoch": 1,
        "init_args": {
            "plans": plans,
            "configuration": configuration,
            "fold": fold,
            "dataset_json": dataset,
            "device": torch.device("cpu"),
        },
        "trainer_name": TRAINER,
        "inference_allowed_mirroring_axes": tuple(mirroring),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)


@dataclass
class NnunetDataset:
    root: Path  # the DatasetXXX folder

    def configuration(self, name: str) -> Path:
        return self.root / f"{TRAINER}__{PLANS}__{name}"


def build_dataset(parent: Path, configurations=("3d_fullres", "2d", "3d_lowres", "3d_cascade_fullres"),
                  folds=(0,)) -> NnunetDataset:  # fmt: skip
    """Write ``parent/Dataset900_Phantom`` with one trained-configuration folder per name, each fold trained."""
    import torch

    plans, dataset = plans_dict(), dataset_dict()
    root = Path(parent) / DATASET
    for name in configurations:
        folder = root / f"{TRAINER}__{PLANS}__{name}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "plans.json").write_text(json.dumps(plans, indent=2), encoding="utf-8")
        (folder / "dataset.json").write_text(json.dumps(dataset, indent=2), encoding="utf-8")
        dim = 2 if name == "2d" else 3
        cascade = name == "3d_cascade_fullres"
        for fold in folds:
            inputs = 1 + (len(LABELS) - 1 if cascade else 0)
            network = _network(plans, name, inputs)
            # Folds differ a little (a smaller previous-stage weight), as an ensemble's members do.
            hand_set(network, inputs, previous_stage_weight=1.0 - 0.2 * int(fold))
            optimizer = torch.optim.SGD(network.parameters(), 0.01, momentum=0.99, nesterov=True)
            loss = -0.5
            mirroring = (0, 1) if dim == 2 else (0, 1, 2)
            save_checkpoint(folder / f"fold_{fold}" / "checkpoint_final.pth", network, optimizer, plans, dataset,
                            name, fold, loss, mirroring)  # fmt: skip
    return NnunetDataset(root)


def write_case(path: Path, image_zyx: np.ndarray, spacing_xyz=IMAGE_SPACING_XYZ, origin=(0.0, 0.0, 0.0),
               direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> Path:  # fmt: skip
    """An image file as nnU-Net reads it (SimpleITK), e.g. ``case_0000.nii.gz``."""
    import SimpleITK as sitk

    itk = sitk.GetImageFromArray(image_zyx.astype(np.float32))
    itk.SetSpacing(tuple(float(s) for s in spacing_xyz))
    itk.SetOrigin(tuple(float(o) for o in origin))
    itk.SetDirection(tuple(float(d) for d in direction))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(itk, str(path))
    return path


# -- A two-channel (CT + PET) model --------------------------------------------------------------------------------
PET_DATASET = "Dataset901_PetCt"
PET_INTENSITY = {"max": 20.0, "mean": 2.0, "median": 1.0, "min": 0.0, "percentile_00_5": 0.0,
                 "percentile_99_5": 15.0, "std": 3.0}  # fmt: skip
CT_LESION_HU = 120.0  # lesion: CT above this ...
PET_LESION_SUV = 4.0  # ... and PET above this, in the same place


def pet_ct_dataset_dict() -> dict:
    return {"channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "lesion": 1}, "numTraining": 8,
            "file_ending": ".nii.gz"}  # fmt: skip


def pet_ct_plans_dict() -> dict:
    """One ``3d_fullres`` configuration with CT normalization on channel 0 and none (values as given) on PET."""
    plans = plans_dict()
    fullres = copy.deepcopy(plans["configurations"]["3d_fullres"])
    fullres["normalization_schemes"] = ["CTNormalization", "NoNormalization"]
    fullres["use_mask_for_norm"] = [False, False]
    fullres["data_identifier"] = "nnUNetPlans_3d_fullres"
    plans.update(
        dataset_name=PET_DATASET,
        configurations={"3d_fullres": fullres},
        foreground_intensity_properties_per_channel={"0": dict(INTENSITY), "1": dict(PET_INTENSITY)},
    )
    return plans


def hand_set_pet_ct(network) -> None:
    """Weights that make the network answer lesion where CT > CT_LESION_HU *and* PET > PET_LESION_SUV.

    With ``a`` the CT above its cut (normalized units) and ``b`` the PET above its cut (a quarter SUV per unit), the
    lesion logit is ``min(a, b) = a - relu(a - b)`` and the background's 0: neither channel alone decides, so a PET
    fed off by some millimetres moves the answer.  The first encoder stage computes ``a + _SHIFT`` (kept positive,
    so LeakyReLU passes it) and ``relu(a - b)``; the last decoder stage passes both through its skip connection.
    """
    import torch

    cut_ct = (CT_LESION_HU - INTENSITY["mean"]) / INTENSITY["std"]
    with torch.no_grad():
        first, last, seg = _zeroed_layers(network)
        features0 = first.weight.shape[0]
        centre = tuple(k // 2 for k in first.weight.shape[2:])
        first.weight[(0, 0, *centre)] = 1.0  # a + _SHIFT
        first.bias[0] = _SHIFT - cut_ct
        first.weight[(1, 0, *centre)] = 1.0  # relu(a - b), b = (pet - PET_LESION_SUV) / 4
        first.weight[(1, 1, *centre)] = -0.25
        first.bias[1] = -cut_ct + PET_LESION_SUV * 0.25
        lc = tuple(k // 2 for k in last.weight.shape[2:])
        for c in (0, 1):
            last.weight[(c, features0 + c, *lc)] = 1.0
        ones = (0,) * (seg.weight.dim() - 2)
        seg.weight[(1, 0, *ones)] = 1.0
        seg.weight[(1, 1, *ones)] = -1.0
        seg.bias[1] = -_SHIFT


def pet_phantom(hot_centre_xyz, hot_radius_mm: float = 9.0, spacing_xyz=(2.5, 2.5, 3.0), origin=(-30.0, -25.0, -12.0),
                size_xyz=(34, 30, 24)):  # fmt: skip
    """A PET on its own grid (coarser than the CT, a larger field of view), identity direction: SUV 1, and 8 in a
    sphere around ``hot_centre_xyz`` (mm). Returns (array z, y, x float32, spacing_xyz, origin)."""
    spacing = np.asarray(spacing_xyz, float)
    k, j, i = np.meshgrid(*(np.arange(n) for n in size_xyz[::-1]), indexing="ij")
    x, y, z = origin[0] + i * spacing[0], origin[1] + j * spacing[1], origin[2] + k * spacing[2]
    c = hot_centre_xyz
    inside = (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= hot_radius_mm**2
    return np.where(inside, 8.0, 1.0).astype(np.float32), tuple(spacing_xyz), tuple(origin)


def build_pet_ct_dataset(parent: Path, folds=(0,)) -> NnunetDataset:
    """Write ``parent/Dataset901_PetCt/nnUNetTrainer__nnUNetPlans__3d_fullres`` (channels CT, PET)."""
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    plans, dataset = pet_ct_plans_dict(), pet_ct_dataset_dict()
    root = Path(parent) / PET_DATASET
    folder = root / f"{TRAINER}__{PLANS}__3d_fullres"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=2), encoding="utf-8")
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2), encoding="utf-8")
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    for fold in folds:
        network = get_network_from_plans(
            arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 2, 2,
            allow_init=True, deep_supervision=False,
        )  # fmt: skip
        hand_set_pet_ct(network)
        optimizer = torch.optim.SGD(network.parameters(), 0.01, momentum=0.99, nesterov=True)
        save_checkpoint(folder / f"fold_{fold}" / "checkpoint_final.pth", network, optimizer, plans, dataset,
                        "3d_fullres", fold, -0.5)  # fmt: skip
    return NnunetDataset(root)


# -- A two-channel (CT + PET) cascade ------------------------------------------------------------------------------
PET_CASCADE_DATASET = "Dataset902_PetCtCascade"
PET_LESION_WEIGHT = 0.5  # how much a unit of the PET (as given: NoNormalization) raises the lesion logit


def hand_set_two_channel(network, previous_stage_channels: int, previous_stage_weight: float = 1.0) -> None:
    """:func:`hand_set`'s CT classifier on channel 0, with the PET (channel 1) raising the lesion logit and a cascade's
    one-hot previous-stage channels (after the two images) raising their own class's, so both the PET and the first
    stage change the answer."""
    import torch

    hand_set(network, 1)
    total = 2 + previous_stage_channels
    with torch.no_grad():
        first, last, seg = (network.encoder.stages[0][0].convs[0].conv, network.decoder.stages[-1].convs[0].conv,
                            network.decoder.seg_layers[-1])  # fmt: skip
        features0 = first.weight.shape[0]
        ones = (0,) * (seg.weight.dim() - 2)
        for c in range(1, total):
            first.weight[(c, c, *(k // 2 for k in first.weight.shape[2:]))] = 1.0
            first.bias[c] = _SHIFT
            last.weight[(c, features0 + c, *(k // 2 for k in last.weight.shape[2:]))] = 1.0
        seg.weight[(1, 1, *ones)] = PET_LESION_WEIGHT
        seg.bias[1] -= PET_LESION_WEIGHT * _SHIFT
        for label in range(1, previous_stage_channels + 1):
            seg.weight[(label, 1 + label, *ones)] = previous_stage_weight
            seg.bias[label] -= previous_stage_weight * _SHIFT


def build_pet_ct_cascade(parent: Path, folds=(0, 1)) -> NnunetDataset:
    """Write ``parent/Dataset902_PetCtCascade`` with a two-channel (CT, PET) ``3d_lowres`` and its
    ``3d_cascade_fullres``, the phantom's three classes."""
    import torch

    plans = plans_dict()
    for name in ("3d_fullres", "3d_lowres"):
        plans["configurations"][name]["normalization_schemes"] = ["CTNormalization", "NoNormalization"]
        plans["configurations"][name]["use_mask_for_norm"] = [False, False]
    intensities = {"0": dict(INTENSITY), "1": dict(PET_INTENSITY)}
    plans.update(dataset_name=PET_CASCADE_DATASET, foreground_intensity_properties_per_channel=intensities)
    dataset = dict(dataset_dict(), channel_names={"0": "CT", "1": "PET"})
    root = Path(parent) / PET_CASCADE_DATASET
    for name in ("3d_lowres", "3d_cascade_fullres"):
        folder = root / f"{TRAINER}__{PLANS}__{name}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "plans.json").write_text(json.dumps(plans, indent=2), encoding="utf-8")
        (folder / "dataset.json").write_text(json.dumps(dataset, indent=2), encoding="utf-8")
        previous = len(LABELS) - 1 if name == "3d_cascade_fullres" else 0
        for fold in folds:
            network = _network(plans, name, 2 + previous)
            hand_set_two_channel(network, previous, previous_stage_weight=1.0 - 0.2 * int(fold))
            optimizer = torch.optim.SGD(network.parameters(), 0.01, momentum=0.99, nesterov=True)
            save_checkpoint(folder / f"fold_{fold}" / "checkpoint_final.pth", network, optimizer, plans, dataset,
                            name, fold, -0.5)  # fmt: skip
    return NnunetDataset(root)
