"""Datalists from a dataset folder and the MONAI transform chains a config asks for.

Fast path (MONAI's fast-training guidance): everything deterministic runs once into a
CacheDataset; the random part (balanced crops, flips, rotations, scaling, intensity shifts)
runs per iteration on the cached tensors, on the GPU when training runs there.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lesionseg.datasets import Dataset, verify_dataset
from lesionseg.datasets.splits import assign_groups, case_groups, case_provenance, groups_across
from lesionseg.datasets.store import _entry_case

log = logging.getLogger(__name__)

KEYS = ("image", "label")


def case_versions(dataset: Dataset, manifest: Mapping[str, Any], cases: Sequence[str]) -> dict[str, dict]:
    """What identifies the data of each case: its current version and the SHA-256 of its files (every channel's)."""
    out = {}
    for case in cases:
        version = dataset.current_version(manifest, case)
        if version is not None:
            files = version["files"]
            out[case] = {
                "version": int(version["version"]),
                "image": files["image"]["sha256"],
                "label": files["label"]["sha256"],
                **{role: entry["sha256"] for role, entry in files.items() if role not in ("image", "label")},
            }
    return out


def _kept_split(kept: Mapping[str, Any], now: Mapping[str, dict], root: Path) -> tuple[list[str], list[str]]:
    """The train and validation cases of the split a run started with, if the dataset still holds them as they were."""
    recorded = kept["cases"]
    gone = sorted(c for c in recorded if c not in now)
    changed = sorted(c for c in recorded if c in now and now[c] != recorded[c])
    if gone or changed:
        what = "; ".join(
            part
            for part in (
                f"{len(gone)} removed ({', '.join(gone[:5])})" if gone else "",
                f"{len(changed)} saved again as a new version ({', '.join(changed[:5])})" if changed else "",
            )
            if part
        )
        raise ValueError(
            f"cases of the split this run started with have changed in {root}: {what}. Resuming on them would "
            "train or validate on other data than the run did. Restore the dataset, or resume with --new-split to "
            "go on from these weights with a fresh split (validation scores before and after are not comparable)"
        )
    return list(kept["train"]), list(kept["validation"])


def dataset_datalists(
    dataset_dir: str | Path, config: dict[str, Any], kept_split: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Training and validation entries (absolute paths) plus what a model must record about its data.

    ``kept_split`` (a resumed run's ``split_record``) pins the cases: they must be unchanged in the
    dataset.  Otherwise the dataset.json split is used, else a seeded random split; both keep the cases
    of one patient or study on one side.
    """
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
    by_case = {_entry_case(e): e for e in entries}
    manifest = dataset.manifest()
    versions = case_versions(dataset, manifest, sorted(by_case))
    groups = case_groups(case_provenance(dataset, manifest, sorted(versions)))
    splits = doc.get("splits")
    if kept_split is not None:
        train_ids, val_ids = _kept_split(kept_split, versions, dataset.root)
        unsplit = sorted(set(by_case) - set(train_ids) - set(val_ids))
        if unsplit:
            log.warning(
                "%d cases added since this run started are not used (%s); start a new run to use them",
                len(unsplit),
                unsplit[:3],
            )
        split_source = f"{kept_split['source']}, kept from the run's start"
    elif splits:
        missing = sorted((set(splits["train"]) | set(splits["validation"])) - set(by_case))
        if missing:
            raise ValueError(
                f"dataset.json splits name cases that were removed ({missing[:5]}); run `lesionseg dataset split` again"
            )
        train_ids, val_ids = list(splits["train"]), list(splits["validation"])
        sides = {key: splits[key] for key in ("train", "validation", "test")}
        mixed = groups_across(groups, sides)
        if mixed:
            raise ValueError(
                f"the dataset.json split puts cases of one patient or study on both sides ({', '.join(mixed[0])}); "
                "run `lesionseg dataset split` again, which keeps them together"
            )
        unsplit = sorted(set(by_case) - {c for key in ("train", "validation", "test", "excluded") for c in splits[key]})
        if unsplit:
            log.warning(
                "%d cases added after the split are not used (%s); split again to use them", len(unsplit), unsplit[:3]
            )
        split_source = f"dataset.json splits (seed {splits.get('seed')})"
    else:
        fraction = config["training"]["validation_fraction"] if len(by_case) > 1 else 0.0
        rng = np.random.default_rng(config["training"]["seed"])
        dealt, rest = assign_groups(groups, [("validation", fraction)], rng)
        val_ids, train_ids = sorted(dealt["validation"]), sorted(rest)
        if not train_ids and len(groups) == 1 and len(by_case) > 1:
            raise ValueError(
                f"all {len(by_case)} cases share one patient or study, so none can be kept apart for validation "
                "without training on the same patient; add cases of other patients, or set "
                "training.validation_fraction: 0.0"
            )
        split_source = (
            f"random {config['training']['validation_fraction']:.0%} validation by patient/study, "
            f"seed {config['training']['seed']}"
        )
    if config["training"]["exclude_lesion_free"]:
        train_ids = _with_lesions(dataset, manifest, train_ids)
    if not train_ids:
        raise ValueError("no training cases left after the split; add cases or lower the validation fraction")
    labels = dataset.labels()
    return {
        "train": [by_case[c] for c in train_ids],
        "validation": [by_case[c] for c in val_ids],
        "train_ids": train_ids,
        "validation_ids": val_ids,
        "split": split_source,
        "split_record": {
            "source": split_source.removesuffix(", kept from the run's start"),
            "train": train_ids,
            "validation": val_ids,
            "cases": {c: versions[c] for c in sorted(train_ids + val_ids)},
        },
        "labels": labels,
        "channels": dataset.channel_names(),
        "lesion_labels": [v for v in dataset.lesion_labels() if v in labels],
        "manifest_sha256": dataset.manifest_sha256(),
        "name": doc.get("name", dataset.root.name),
        "root": str(dataset.root.resolve()),
    }


def _with_lesions(dataset: Dataset, manifest: Mapping[str, Any], train_ids: list[str]) -> list[str]:
    """``training.exclude_lesion_free``: the training cases that hold a lesion label (validation keeps all)."""
    lesion_labels = set(dataset.lesion_labels())
    if not lesion_labels:
        raise ValueError(
            'training.exclude_lesion_free needs lesion labels: set "lesion_labels" in dataset.json '
            "(e.g. `lesionseg dataset init ... --lesion-labels lesion`)"
        )
    kept = [c for c in train_ids if set(dataset.current_version(manifest, c)["labels_present"]) & lesion_labels]
    if not kept:
        raise ValueError("training.exclude_lesion_free: no training case holds a lesion label; nothing to train on")
    log.info("training.exclude_lesion_free: %d of %d training cases hold lesions", len(kept), len(train_ids))
    return kept


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
    chain.append(intensity_transform(pre["intensity"], pre["windows"]))
    # Crops must fit: pad volumes smaller than a patch.
    chain.append(mt.SpatialPadd(keys=KEYS, spatial_size=config["augmentation"]["patch_size"]))
    chain.append(mt.EnsureTyped(keys=KEYS, dtype=(np.float32, np.uint8), track_meta=False))
    return chain


def intensity_transform(intensity: dict[str, Any], windows: Sequence[Sequence[float]] = ()):
    """The configured intensity scaling; on a multi-channel image, per channel (:class:`ChannelIntensityd`)."""
    return ChannelIntensityd(intensity, windows)


class ChannelIntensityd:
    """Scale ``image``'s intensities channel by channel: the configured scaling on the first channel, and
    :func:`lesionseg.inference.channels.channel_intensity`'s rule (what inference does) on the others.

    A single-channel image gets exactly the configured MONAI transform.  With ``windows``, the (single, CT)
    channel becomes one channel per window instead (:func:`lesionseg.inference.channels.window_channels`).
    """

    def __init__(self, intensity: dict[str, Any], windows: Sequence[Sequence[float]] = ()):
        self.intensity = dict(intensity)
        self.windows = [tuple(pair) for pair in windows]
        self.first = _monai_intensity(self.intensity)

    def __call__(self, data: dict) -> dict:
        import torch

        from lesionseg.inference.channels import channel_intensity, window_channels

        image = data["image"]
        if self.windows:
            if image.shape[0] != 1:
                raise ValueError(
                    f"preprocessing.windows splits one CT image into channels; this dataset has {image.shape[0]} "
                    "image channels (set windows: [] for a multi-channel dataset)"
                )
            return {**data, "image": window_channels(torch.as_tensor(image)[0], self.windows)}
        if image.shape[0] == 1:
            return self.first(data)
        parts = [self.first({"image": image[:1]})["image"]]
        for channel in range(1, image.shape[0]):
            scale = _monai_intensity(channel_intensity(self.intensity, channel))
            parts.append(scale({"image": image[channel : channel + 1]})["image"])
        return {**data, "image": torch.cat([torch.as_tensor(part) for part in parts], dim=0)}


def _monai_intensity(intensity: dict[str, Any]):
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


def random_transforms(config: dict[str, Any], device: Any = None, num_classes: int | None = None) -> list:
    """Per-iteration augmentation on cached tensors (moved to ``device`` first).

    ``num_classes`` (label values 0..n-1) is needed by ``augmentation.sampling: label_classes`` unless its
    ``class_ratios`` give one ratio per class.
    """
    from monai import transforms as mt

    aug = config["augmentation"]
    chain: list = []
    if device is not None and str(device) != "cpu":
        chain.append(mt.EnsureTyped(keys=KEYS, device=device, track_meta=False))
    chain.append(_crop(aug, num_classes))
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


def _crop(aug: dict[str, Any], num_classes: int | None):
    """The training crop: foreground and background centres (pos_neg) or centres on each label value."""
    from monai import transforms as mt

    common = {
        "keys": KEYS,
        "label_key": "label",
        "spatial_size": aug["patch_size"],
        "num_samples": int(aug["samples_per_volume"]),
        "allow_smaller": True,
    }
    if aug["sampling"] == "pos_neg":
        return mt.RandCropByPosNegLabeld(
            **common, pos=aug["positive"], neg=aug["negative"], image_key="image", image_threshold=0
        )
    if aug["sampling"] == "components":
        from lesionseg.training.sampling import RandCropByComponentd

        samples = int(aug["samples_per_volume"])
        return RandCropByComponentd(KEYS, aug["patch_size"], samples, aug["positive"], aug["negative"])
    ratios = list(aug["class_ratios"])
    if num_classes is None:
        num_classes = len(ratios)
    if num_classes < 2:
        raise ValueError("augmentation.sampling label_classes: the number of label classes is unknown here")
    if ratios and len(ratios) != num_classes:
        raise ValueError(
            f"augmentation.class_ratios gives {len(ratios)} ratios, but the labels have {num_classes} classes "
            "(background and each label value); give one ratio per class, background first"
        )
    # A class absent from a volume gets no crops there (MONAI warns and redistributes its share).
    return mt.RandCropByLabelClassesd(**common, ratios=ratios or None, num_classes=num_classes, warn=False)


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
