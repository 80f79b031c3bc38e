"""Checking a dataset: hashes against the manifest, grids, and label values."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lesionseg.datasets.store import PENDING, Dataset, _entry_case, entry_images, image_roles, sha256_file
from lesionseg.image import grid_mismatch
from lesionseg.io import read_image


@dataclass
class VerifyReport:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cases_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_dataset(dataset_dir: str | Path, check_geometry: bool = True) -> VerifyReport:
    """Every problem found, not just the first; a dataset with no problems is safe to train on."""
    dataset = Dataset(dataset_dir)
    report = VerifyReport()
    try:
        doc = dataset.description()
        labels = dataset.labels()
        manifest = dataset.manifest()
        roles = [*image_roles(len(dataset.channel_names())), "label"]
    except (ValueError, FileNotFoundError) as error:
        report.problems.append(str(error))
        return report
    if not dataset.manifest_path.is_file():
        report.problems.append("manifest.json is missing: the case history and hashes are gone")
        return report

    # Per case: the SHA-256 of each saved version's files (images in channel order, then the label) → version.
    known_pairs: dict[str, dict[tuple[str, ...], int]] = {}
    for case_id, case in manifest["cases"].items():
        for version in case["versions"]:
            if version.get("removed"):
                continue
            missing_roles = [role for role in roles if role not in version["files"]]
            if missing_roles:
                report.problems.append(
                    f"{case_id} v{version['version']}: the manifest lists no {', '.join(missing_roles)} file; this "
                    f"dataset's cases have {len(roles) - 1} channel(s)"
                )
                continue
            pair = []
            for role in roles:
                entry = version["files"][role]
                path = dataset.root / entry["path"]
                if not path.is_file():
                    report.problems.append(f"{case_id} v{version['version']}: {entry['path']} is missing")
                elif sha256_file(path) != entry["sha256"]:
                    report.problems.append(
                        f"{case_id} v{version['version']}: {entry['path']} does not match its SHA-256 in the "
                        "manifest (the file was changed or is corrupt)"
                    )
                pair.append(entry["sha256"])
            known_pairs.setdefault(case_id, {})[tuple(pair)] = version["version"]

    listed = set()
    for entry in doc.get("training", []):
        case_id = _entry_case(entry)
        listed.add(case_id)
        report.cases_checked += 1
        names = [*entry_images(entry), str(entry["label"])]
        if len(names) != len(roles):
            report.problems.append(
                f"{case_id}: the datalist entry lists {len(names) - 1} image(s), but this dataset's cases have "
                f"{len(roles) - 1} channel(s); `lesionseg dataset verify --repair` rewrites it from the manifest"
            )
            continue
        paths = [dataset.root / name for name in names]
        missing = [name for name, path in zip(names, paths, strict=True) if not path.is_file()]
        if missing:
            report.problems.append(f"{case_id}: datalist file(s) missing: {', '.join(missing)}")
            continue
        digests = tuple(sha256_file(path) for path in paths)
        version = known_pairs.get(case_id, {}).get(digests)
        if version is None:
            saved = known_pairs.get(case_id, {})
            bad = [name for i, (name, digest) in enumerate(zip(names, digests, strict=True))
                   if digest not in {files[i] for files in saved}]  # fmt: skip
            what = ", ".join(bad) if bad else "image and label come from different versions"
            report.problems.append(f"{case_id}: SHA-256 matches no saved version in manifest.json: {what}")
        else:
            current = manifest["cases"].get(case_id, {}).get("current")
            if manifest["cases"][case_id].get("status") != "active":
                report.notes.append(f"{case_id}: removed, but still listed (an interrupted remove; any write ends it)")
            elif version != current:
                report.notes.append(f"{case_id}: version {version} is listed, {current} is newest (interrupted save)")
        if check_geometry:
            _check_pair(case_id, paths[:-1], paths[-1], labels, report)

    pending = dataset.root / PENDING
    if pending.is_file():
        report.notes.append(
            f"an interrupted write is pending ({pending.read_text(encoding='utf-8').strip()}); "
            "the next write or `verify --repair` finishes it"
        )
    for case_id in dataset.active_cases(manifest):
        if case_id not in listed:
            report.notes.append(
                f"{case_id}: saved but not yet in the datalist (an interrupted save; any write ends it)"
            )
    return report


def _check_pair(
    case_id: str, image_paths: list[Path], label_path: Path, labels: dict[int, str], report: VerifyReport
) -> None:
    try:
        images = [read_image(path) for path in image_paths]
        label = read_image(label_path)
    except Exception as error:  # a corrupt file must become a listed problem, whatever the reader raises
        report.problems.append(f"{case_id}: cannot be read ({type(error).__name__}: {error})")
        return
    image = images[0]
    for channel, (path, other) in enumerate(zip(image_paths[1:], images[1:], strict=True), start=1):
        mismatch = grid_mismatch(other, image)
        if mismatch:
            report.problems.append(
                f"{case_id}: channel {channel} ({path.name}) is not on the first channel's grid ({mismatch})"
            )
    mismatch = grid_mismatch(label, image)
    if mismatch:
        report.problems.append(f"{case_id}: label and image are on different grids ({mismatch})")
    if not np.issubdtype(label.array.dtype, np.integer):
        report.problems.append(f"{case_id}: the label has voxel type {label.array.dtype}, not integers")
    unknown = sorted(int(v) for v in np.unique(label.array) if int(v) not in labels)
    if unknown:
        report.problems.append(f"{case_id}: label values {unknown} are not in dataset.json labels {sorted(labels)}")
