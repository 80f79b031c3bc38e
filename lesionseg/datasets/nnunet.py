"""Export to nnU-Net v2's raw layout: ``DatasetXXX_Name/imagesTr/<case>_0000.nii.gz`` and its dataset.json."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from lesionseg.datasets.store import FILE_ENDING, Dataset, _entry_case, entry_images
from lesionseg.datasets.verify import verify_dataset
from lesionseg.io.atomic import write_json_atomic


def export_nnunet(dataset_dir: str | Path, output: str | Path, dataset_id: int, name: str | None = None) -> Path:
    """Copy the current cases into ``output/DatasetXXX_Name``; returns that folder."""
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"nnU-Net dataset ids are 1..999, got {dataset_id} (500 and up are free for your own)")
    dataset = Dataset(dataset_dir)
    report = verify_dataset(dataset.root, check_geometry=False)
    if not report.ok:
        raise ValueError("the dataset does not verify; fix it first: " + "; ".join(report.problems[:5]))
    doc = dataset.description()
    labels = dataset.labels()
    if sorted(labels) != list(range(len(labels))):
        raise ValueError(
            f"nnU-Net v2 needs consecutive label values 0..N, this dataset has {sorted(labels)}; renumber the labels"
        )
    title = re.sub(r"[^A-Za-z0-9]+", "", name or str(doc.get("name", dataset.root.name))) or "LesionSeg"
    target = Path(output) / f"Dataset{dataset_id:03d}_{title}"
    if target.exists() and any(target.iterdir()):
        raise ValueError(f"{target} already exists and is not empty; pick another --id or remove it")
    (target / "imagesTr").mkdir(parents=True, exist_ok=True)
    (target / "labelsTr").mkdir(exist_ok=True)
    entries = doc.get("training", [])
    for entry in entries:
        case_id = _entry_case(entry)
        # nnU-Net keys channels by a 4-digit suffix, in dataset.json channel_names order: CT alone is 0000.
        for channel, image in enumerate(entry_images(entry)):
            shutil.copyfile(dataset.root / image, target / "imagesTr" / f"{case_id}_{channel:04d}{FILE_ENDING}")
        shutil.copyfile(dataset.root / entry["label"], target / "labelsTr" / f"{case_id}{FILE_ENDING}")
    write_json_atomic(
        target / "dataset.json",
        {
            "channel_names": {str(c): name for c, name in enumerate(dataset.channel_names())},
            "labels": {labels[v]: v for v in sorted(labels)},
            "numTraining": len(entries),
            "file_ending": FILE_ENDING,
            "name": doc.get("name", title),
            "description": doc.get("description", ""),
            "lesionseg_manifest_sha256": dataset.manifest_sha256(),
        },
    )
    if "splits" in doc:
        # nnU-Net reads custom folds from splits_final.json in its preprocessed folder; keep ours beside it.
        write_json_atomic(
            target / "splits_final.json", [{"train": doc["splits"]["train"], "val": doc["splits"]["validation"]}]
        )
    return target
