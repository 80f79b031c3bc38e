"""Datalists from a dataset folder and the MONAI transform chains a config asks for.

Fast path (MONAI's fast-training guidance): everything deterministic runs once into a
CacheDataset; the random part (balanced crops, flips, rotations, scaling, intensity shifts)
runs per iteration on the cached tensors, on the GPU when training runs there.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from lesionseg.datasets import Dataset, verify_dataset

log = logging.getLogger(__name__)

KEYS = ("image", "label")


def dataset_datalists(dataset_dir: str | Path, config: dict[str, Any]) -> dict[str, Any]:
    """Training and validation entries (absolute paths) plus what a model must record about its data."""
    from monai.data import load_decathlon_datalist

    dataset = Dataset(dataset_dir)
    dataset.require()
    report = verify_dataset(dataset.root, check_geometry=False)
    if not report.ok:
        raise ValueError(
            f"dataset {dataset.root} does not verify ({report.problems[0]}); run `lesionseg dataset verify` "
            "and fix it before training"
        )
    doc = dataset.description()
    entries = load_decathlon_datalist(str(dataset.description_path), True, "training", base_dir=str(dataset.root))
    if not entries:
        raise ValueError(f"dataset {dataset.root} has no training cases; add some with `lesionseg dataset add`")
    by_case = {str(e.get("case", Path(e["image"]).name.split(".")[0])): e for e in entries}
    splits = doc.get("splits")
    if splits:
        missing = sorted((set(splits["train"]) | set(splits["validation"])) - set(by_case))
        if missing:
            raise ValueError(
                f"dataset.json splits name cases that were removed ({missing[:5]}); run `lesionseg dataset split` again"
            )
        train_ids, val_ids = list(splits["train"]), list(splits["validation"])
        unsplit = sorted(set(by_case) - {c for key in ("train", "validation", "test", "excluded") for c in splits[key]})
        if unsplit:
            log.warning(
                "%d cases added after the split are not used (%s); split again to use them", len(unsplit), unsplit[:3]
            )
        split_source = f"dataset.json splits (seed {splits.get('seed')})"
    else:
        ids = sorted(by_case)
        order = np.random.default_rng(config["training"]["seed"]).permutation(len(ids))
        n_val = int(round(len(ids) * config["training"]["validation_fraction"])) if len(ids) > 1 else 0
        val_ids = sorted(ids[i] for i in order[:n_val])
        train_ids = sorted(ids[i] for i in order[n_val:])
        split_source = (
            f"random {config['training']['validation_fraction']:.0%} validation, seed {config['training']['seed']}"
        )
    if not train_ids:
        raise ValueError("no training cases left after the split; add cases or lower the validation fraction")
    labels = dataset.labels()
    return {
        "train": [by_case[c] for c in train_ids],
        "validation": [by_case[c] for c in val_ids],
        "train_ids": train_ids,
        "validation_ids": val_ids,
        "split": split_source,
        "labels": labels,
        "lesion_labels": [v for v in dataset.lesion_labels() if v in labels],
        "manifest_sha256": dataset.manifest_sha256(),
        "name": doc.get("name", dataset.root.name),
        "root": str(dataset.root.resolve()),
    }


def deterministic_transforms(config: dict[str, Any]) -> list:
    """Load, orient, resample and scale: run once per volume and cached."""
    from monai import transforms as mt

    pre = config["preprocessing"]
    chain = [
        mt.LoadImaged(keys=KEYS, image_only=True),
        mt.EnsureChannelFirstd(keys=KEYS),
        mt.Orientationd(keys=KEYS, axcodes=pre["orientation"]),
    ]
    if pre["spacing"] is not None:
        chain.append(mt.Spacingd(keys=KEYS, pixdim=pre["spacing"], mode=("bilinear", "nearest")))
    if pre["crop_to_label_mm"] > 0:
        chain.append(CropAroundLabeld(pre["crop_to_label_mm"], pre["spacing"]))
    chain.append(intensity_transform(pre["intensity"]))
    # Crops must fit: pad volumes smaller than a patch.
    chain.append(mt.SpatialPadd(keys=KEYS, spatial_size=config["augmentation"]["patch_size"]))
    chain.append(mt.EnsureTyped(keys=KEYS, dtype=(np.float32, np.uint8), track_meta=False))
    return chain


def intensity_transform(intensity: dict[str, Any]):
    from monai import transforms as mt

    if intensity["kind"] == "range":
        return mt.ScaleIntensityRanged(
            keys="image",
            a_min=intensity["a_min"],
            a_max=intensity["a_max"],
            b_min=intensity["b_min"],
            b_max=intensity["b_max"],
            clip=intensity["clip"],
        )
    return mt.NormalizeIntensityd(keys="image", nonzero=intensity["nonzero"])


def random_transforms(config: dict[str, Any], device: Any = None) -> list:
    """Per-iteration augmentation on cached tensors (moved to ``device`` first)."""
    from monai import transforms as mt

    aug = config["augmentation"]
    chain: list = []
    if device is not None and str(device) != "cpu":
        chain.append(mt.EnsureTyped(keys=KEYS, device=device, track_meta=False))
    chain.append(
        mt.RandCropByPosNegLabeld(
            keys=KEYS,
            label_key="label",
            spatial_size=aug["patch_size"],
            pos=aug["positive"],
            neg=aug["negative"],
            num_samples=int(aug["samples_per_volume"]),
            image_key="image",
            image_threshold=0,
            allow_smaller=True,
        )
    )
    if aug["flip_prob"] > 0:
        axes = (0, 1) if config["network"]["slice_mode"] else (0, 1, 2)
        chain += [mt.RandFlipd(keys=KEYS, prob=aug["flip_prob"], spatial_axis=a) for a in axes]
    if aug["rotate_prob"] > 0:
        angle = float(np.radians(aug["rotate_degrees"]))
        in_plane_only = config["network"]["slice_mode"]
        # In 3D, MONAI's range_z turns about the third axis (within the plane of the first two, whatever
        # its docstring says; see monai.transforms.utils.create_rotate): the only turn a slice allows.
        chain.append(
            mt.RandRotated(
                keys=KEYS,
                range_x=0.0 if in_plane_only else angle,
                range_y=0.0 if in_plane_only else angle,
                range_z=angle,
                prob=aug["rotate_prob"],
                mode=("bilinear", "nearest"),
                padding_mode="border",
            )
        )
    if aug["scale_prob"] > 0:
        chain.append(
            mt.RandZoomd(
                keys=KEYS,
                prob=aug["scale_prob"],
                min_zoom=[1.0 - aug["scale_range"]] * 2 + [1.0]
                if config["network"]["slice_mode"]
                else 1.0 - aug["scale_range"],
                max_zoom=[1.0 + aug["scale_range"]] * 2 + [1.0]
                if config["network"]["slice_mode"]
                else 1.0 + aug["scale_range"],
                mode=("trilinear", "nearest"),
                keep_size=True,
            )
        )
    if aug["intensity_shift_prob"] > 0:
        chain.append(
            mt.RandShiftIntensityd(keys="image", offsets=aug["intensity_shift"], prob=aug["intensity_shift_prob"])
        )
    return chain


class CropAroundLabeld:
    """Crop image and label to the labels' bounding box plus a margin in mm; label-free volumes stay whole.

    Deterministic, so it runs once into the cache.  (MONAI's CropForegroundd would crop a label-free
    volume to nothing.)
    """

    def __init__(self, margin_mm: float, spacing_mm: list[float]):
        self.margin = [int(np.ceil(margin_mm / s)) for s in spacing_mm]

    def __call__(self, data: dict) -> dict:
        import torch

        out = dict(data)
        found = torch.nonzero(torch.as_tensor(data["label"])[0] > 0)
        if len(found) == 0:
            return out
        shape = data["label"].shape[1:]
        low = [max(0, int(v) - m) for v, m in zip(found.min(0).values, self.margin, strict=True)]
        high = [min(n, int(v) + m + 1) for v, m, n in zip(found.max(0).values, self.margin, shape, strict=True)]
        box = (slice(None), *(slice(a, b) for a, b in zip(low, high, strict=True)))
        for key in KEYS:
            out[key] = data[key][box]
        return out
