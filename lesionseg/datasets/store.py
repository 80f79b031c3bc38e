"""A training dataset on disk: Decathlon layout plus an append-only, hashed version history.

Layout of a dataset folder::

    dataset.json            Decathlon description + datalist (what MONAI and training read)
    manifest.json           every version of every case: files, SHA-256, provenance (the record of truth)
    imagesTr/<case>.nii.gz  the current image of each active case (a copy of its newest version)
    labelsTr/<case>.nii.gz  the current labelmap
    versions/<case>/v<N>/   image.nii.gz + label.nii.gz of version N, never rewritten

A multi-channel dataset (``dataset init --channels CT,PET``) names its channels in dataset.json
(``channel_names``, as nnU-Net does) and keeps one image per channel, all on the first channel's
grid: ``imagesTr/<case>_0000.nii.gz``, ``<case>_0001.nii.gz``... (a suffix on every channel, so no
case id can collide with another case's channel), ``image.nii.gz``, ``image_0001.nii.gz``... in a
version folder, and a list of channel files as the datalist entry's ``image`` (MONAI's LoadImaged
stacks a list as channels).  A single-channel dataset's files are exactly as above.

Why this order of writes is crash-safe: a version's files are written (atomically) before the
manifest names them, so the manifest only ever points at whole files; the manifest write is the
commit.  While the current copies in imagesTr/labelsTr are being swapped, dataset.json points
that case at the version folder, so a reader never sees an image and a label from different
versions.  ``recover`` finishes whatever a killed writer left undone; every writer calls it first.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lesionseg.io.atomic import write_json_atomic

MANIFEST_FORMAT = "lesionseg-dataset-manifest/1"
FILE_ENDING = ".nii.gz"
CASE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# Channel names go into model specs (``inputs``) and ``segment --channel NAME=PATH``, so the spec's name rule holds.
CHANNEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
# Set by the crash tests: seconds to sleep at each save step, so a kill can land between steps.
PAUSE_ENV = "LESIONSEG_DATASET_STEP_PAUSE"


def utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def step(name: str) -> None:
    """Mark a save step; under ``PAUSE_ENV`` announce it on stderr and wait (test hook)."""
    pause = os.environ.get(PAUSE_ENV)
    if pause:
        print(f"dataset-step: {name}", file=sys.stderr, flush=True)
        time.sleep(float(pause))


def check_case_id(case_id: str) -> str:
    if not CASE_ID_PATTERN.match(case_id or "") or ".." in case_id or case_id.endswith((".nii", ".gz")):
        raise ValueError(
            f"invalid case id {case_id!r}: use letters, digits, '_', '-', '.' (up to 128, not starting with a symbol)"
        )
    return case_id


def image_roles(channels: int) -> list[str]:
    """The manifest's file roles of a version's images, channel by channel; each is also the file's stem."""
    return ["image"] + [f"image_{c:04d}" for c in range(1, channels)]


def check_channel_names(names: list[str]) -> list[str]:
    """Channel names as given, validated: the spec's name rule, each once."""
    if not names:
        raise ValueError("a dataset needs at least one channel, e.g. --channels CT or --channels CT,PET")
    for name in names:
        if not CHANNEL_NAME_PATTERN.match(name):
            raise ValueError(
                f"channel name {name!r}: use letters, digits, '_', '-', '.' (up to 32, not starting with a symbol), "
                "e.g. CT or PET"
            )
    folded = [n.casefold() for n in names]
    if len(set(folded)) != len(folded):
        raise ValueError(f"channel names repeat ({', '.join(names)}); name each channel once")
    return list(names)


def parse_labels(labels: Mapping[str, Any]) -> dict[int, str]:
    """dataset.json ``labels`` ({"0": "background", "1": "spleen"}) as {value: name}; validated."""
    if not isinstance(labels, Mapping) or not labels:
        raise ValueError('dataset.json needs a "labels" object such as {"0": "background", "1": "lesion"}')
    out: dict[int, str] = {}
    for key, name in labels.items():
        try:
            value = int(key)
        except (TypeError, ValueError):
            raise ValueError(
                f'dataset.json labels: key {key!r} is not an integer label value (write "1": "name")'
            ) from None
        if value < 0 or not isinstance(name, str) or not name:
            raise ValueError(f"dataset.json labels: {key!r}: {name!r} needs a value >= 0 and a non-empty name")
        out[value] = name
    if 0 not in out:
        raise ValueError('dataset.json labels must name value 0 (e.g. "0": "background")')
    names = [n.lower() for n in out.values()]
    if len(set(names)) != len(names):
        raise ValueError(f"dataset.json labels: names must be unique, got {sorted(out.values())}")
    return out


class Dataset:
    """Paths and documents of one dataset folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- paths ------------------------------------------------------------------------------
    @property
    def description_path(self) -> Path:
        return self.root / "dataset.json"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def image_path(self, case_id: str, channel: int = 0) -> Path:
        if len(self.channel_names()) == 1:
            return self.root / "imagesTr" / f"{case_id}{FILE_ENDING}"
        return self.root / "imagesTr" / f"{case_id}_{channel:04d}{FILE_ENDING}"

    def image_paths(self, case_id: str) -> list[Path]:
        """The current image of every channel, in channel order."""
        return [self.image_path(case_id, c) for c in range(len(self.channel_names()))]

    def label_path(self, case_id: str) -> Path:
        return self.root / "labelsTr" / f"{case_id}{FILE_ENDING}"

    def version_dir(self, case_id: str, version: int) -> Path:
        return self.root / "versions" / case_id / f"v{version}"

    def relative(self, path: Path) -> str:
        return "./" + path.relative_to(self.root).as_posix()

    # -- documents ----------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.description_path.is_file()

    def require(self) -> None:
        if not self.root.is_dir():
            raise FileNotFoundError(f"no dataset folder {self.root}; create one with `lesionseg dataset init`")
        if not self.description_path.is_file():
            raise FileNotFoundError(
                f"{self.root} has no dataset.json; create the dataset with `lesionseg dataset init {self.root} "
                "--labels 1=NAME,...`"
            )

    def description(self) -> dict[str, Any]:
        self.require()
        try:
            doc = json.loads(self.description_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{self.description_path}: not valid JSON ({error})") from None
        parse_labels(doc.get("labels"))
        return doc

    def labels(self) -> dict[int, str]:
        return parse_labels(self.description()["labels"])

    def channel_names(self) -> list[str]:
        """The input channels in order: dataset.json ``channel_names``, else its Decathlon ``modality`` (one: CT)."""
        doc = self.description()
        table = doc.get("channel_names") or doc.get("modality") or {"0": "CT"}
        try:
            ordered = sorted(table.items(), key=lambda item: int(item[0]))
        except (AttributeError, ValueError):
            raise ValueError(f'{self.description_path}: channel_names must be like {{"0": "CT", "1": "PET"}}') from None
        if [int(k) for k, _ in ordered] != list(range(len(ordered))):
            raise ValueError(f"{self.description_path}: channel numbers must run 0, 1, 2...; got {sorted(table)}")
        return [str(v) for _, v in ordered]

    def lesion_labels(self) -> list[int]:
        return [int(v) for v in self.description().get("lesion_labels", [])]

    def manifest(self) -> dict[str, Any]:
        if not self.manifest_path.is_file():
            return {"format": MANIFEST_FORMAT, "cases": {}}
        try:
            doc = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{self.manifest_path}: not valid JSON ({error})") from None
        if doc.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{self.manifest_path}: unknown format {doc.get('format')!r}, expected {MANIFEST_FORMAT}")
        return doc

    def manifest_sha256(self) -> str:
        """Hash of manifest.json: names exactly which case versions a model was trained on."""
        return sha256_file(self.manifest_path) if self.manifest_path.is_file() else hashlib.sha256(b"").hexdigest()

    def write_description(self, doc: dict[str, Any]) -> None:
        doc["numTraining"] = len(doc.get("training", []))
        write_json_atomic(self.description_path, doc)

    def write_manifest(self, doc: dict[str, Any]) -> None:
        write_json_atomic(self.manifest_path, doc)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One writer at a time (an advisory lock that the OS releases when the writer dies)."""
        self.require()
        with open(self.root / ".lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ValueError(
                    f"another process is writing to the dataset {self.root}; try again when it ends"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- current cases ------------------------------------------------------------------------
    def current_version(self, manifest: Mapping[str, Any], case_id: str) -> dict[str, Any] | None:
        case = manifest["cases"].get(case_id)
        if not case or case.get("status") != "active":
            return None
        return next(v for v in case["versions"] if v["version"] == case["current"])

    def active_cases(self, manifest: Mapping[str, Any] | None = None) -> list[str]:
        manifest = manifest if manifest is not None else self.manifest()
        return sorted(c for c, case in manifest["cases"].items() if case.get("status") == "active")


def init_dataset(
    root: str | Path,
    labels: Mapping[int, str],
    name: str | None = None,
    modality: str = "CT",
    lesion_labels: list[int] | None = None,
    description: str = "",
    channels: list[str] | None = None,
) -> Dataset:
    """Create an empty dataset folder with its dataset.json and manifest.

    ``labels`` {value: name} lists the foreground labels: at least one, values 1 and up, names unique.
    ``channels`` names the input images of each case in order (e.g. ["CT", "PET"]); None: one, named ``modality``.
    """
    names = check_channel_names(list(channels)) if channels else [modality]
    dataset = Dataset(root)
    if dataset.description_path.exists():
        raise ValueError(f"{dataset.root} already holds a dataset.json; add cases to it with `lesionseg dataset add`")
    for value, label_name in labels.items():
        if int(value) != value or int(value) < 1:
            raise ValueError(
                f"label {label_name!r}={value}: label values start at 1 (0 is the background, which every dataset "
                "has); give e.g. spleen=1"
            )
    if not labels:
        raise ValueError("a dataset needs at least one foreground label, e.g. --labels spleen=1")
    table = {0: "background", **{int(k): str(v) for k, v in labels.items()}}
    named = [str(v).strip().lower() for v in labels.values()]
    if "background" in named:
        raise ValueError("'background' is the name of label 0, which every dataset has; name the foreground labels")
    parse_labels({str(k): v for k, v in table.items()})
    unknown = sorted(set(lesion_labels or []) - set(table) - {0})
    if unknown or 0 in (lesion_labels or []):
        raise ValueError(f"lesion labels {lesion_labels} must be values listed in the labels {sorted(table)[1:]}")
    dataset.root.mkdir(parents=True, exist_ok=True)
    for sub in ("imagesTr", "labelsTr", "versions"):
        (dataset.root / sub).mkdir(exist_ok=True)
    dataset.write_manifest({"format": MANIFEST_FORMAT, "created": utc_now(), "cases": {}})
    numbered = {str(c): n for c, n in enumerate(names)}
    doc: dict[str, Any] = {
        "name": name or dataset.root.name,
        "description": description,
        "tensorImageSize": "3D",
        "modality": numbered,
    }
    if len(names) > 1:
        doc["channel_names"] = numbered
    doc.update(
        {
            "labels": {str(k): table[k] for k in sorted(table)},
            "lesion_labels": sorted(int(v) for v in (lesion_labels or [])),
            "file_ending": FILE_ENDING,
            "numTraining": 0,
            "training": [],
        }
    )
    dataset.write_description(doc)
    return dataset


def copy_atomic(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` so that ``target`` is the old file or the whole new one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    # A copy, not a hard link: an editor that rewrites the current file in place must not
    # change the archived version behind it.
    shutil.copyfile(source, tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, target)


def _entry(dataset: Dataset, case_id: str, images: list[Path], label: Path) -> dict[str, Any]:
    image: str | list[str] = [dataset.relative(p) for p in images] if len(images) > 1 else dataset.relative(images[0])
    return {"image": image, "label": dataset.relative(label), "case": case_id}


def entry_images(entry: Mapping[str, Any]) -> list[str]:
    """A datalist entry's image files, one per channel (a single-channel entry's ``image`` is one string)."""
    image = entry["image"]
    return [str(p) for p in image] if isinstance(image, list) else [str(image)]


def set_datalist_entry(dataset: Dataset, doc: dict[str, Any], case_id: str, entry: dict[str, str] | None) -> bool:
    """Put, replace or (``entry=None``) drop a case's datalist entry in ``doc``; True when it changed."""
    training = [e for e in doc.get("training", []) if _entry_case(e) != case_id]
    if entry is not None:
        training.append(entry)
    training.sort(key=_entry_case)
    changed = training != doc.get("training", [])
    doc["training"] = training
    return changed


def _entry_case(entry: Mapping[str, Any]) -> str:
    if "case" in entry:
        return str(entry["case"])
    name = Path(entry_images(entry)[0]).name
    return name[: -len(FILE_ENDING)] if name.endswith(FILE_ENDING) else name


def publish(dataset: Dataset, case_id: str, version: Mapping[str, Any]) -> None:
    """Make ``version`` the case's current files in imagesTr/labelsTr and the datalist."""
    files = version["files"]
    roles = image_roles(len(dataset.channel_names()))
    images_src = [dataset.root / files[role]["path"] for role in roles]
    label_src = dataset.root / files["label"]["path"]
    images_dst, label_dst = dataset.image_paths(case_id), dataset.label_path(case_id)
    doc = dataset.description()
    current = {e.get("case", _entry_case(e)): e for e in doc.get("training", [])}.get(case_id)
    pairs = [*zip(images_dst, roles, strict=True), (label_dst, "label")]
    in_place = current == _entry(dataset, case_id, images_dst, label_dst) and all(
        path.is_file() and sha256_file(path) == files[role]["sha256"] for path, role in pairs
    )
    if in_place:
        return
    if current is not None:
        # Readers see the version folder's consistent files while the current copies change.
        if set_datalist_entry(dataset, doc, case_id, _entry(dataset, case_id, images_src, label_src)):
            dataset.write_description(doc)
        step("datalist-points-at-version")
    for source, target, role in zip(images_src, images_dst, roles, strict=True):
        copy_atomic(source, target)
        step(f"{role}-published")
    copy_atomic(label_src, label_dst)
    step("label-published")
    set_datalist_entry(dataset, doc, case_id, _entry(dataset, case_id, images_dst, label_dst))
    dataset.write_description(doc)
    step("datalist-updated")


def unpublish(dataset: Dataset, case_id: str) -> None:
    """Take a case out of the datalist, then delete its current copies (its versions stay)."""
    doc = dataset.description()
    if set_datalist_entry(dataset, doc, case_id, None):
        dataset.write_description(doc)
        step("datalist-updated")
    for path in (*dataset.image_paths(case_id), dataset.label_path(case_id)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


PENDING = ".pending.json"


def begin_write(dataset: Dataset, case_id: str, operation: str) -> None:
    """Name the case a writer is about to change, so that ``recover`` knows where to look after a kill."""
    write_json_atomic(dataset.root / PENDING, {"case": case_id, "operation": operation, "started": utc_now()})


def end_write(dataset: Dataset) -> None:
    with contextlib.suppress(FileNotFoundError):
        (dataset.root / PENDING).unlink()


def recover(dataset: Dataset, full: bool = False) -> list[str]:
    """Finish or discard what an interrupted writer left; returns what was done.  Hold the lock.

    Normally only the case named in ``.pending.json`` is looked at, so a save costs the same in a
    dataset of ten cases or ten thousand; ``full`` reconciles every case (``dataset verify --repair``).
    """
    pending_path = dataset.root / PENDING
    pending = json.loads(pending_path.read_text(encoding="utf-8")) if pending_path.is_file() else None
    if pending is None and not full:
        return []
    done: list[str] = []
    manifest = dataset.manifest()
    cases = (
        sorted(set(manifest["cases"]) | {p.name for p in (dataset.root / "versions").glob("*")})
        if full
        else ([pending["case"]])
    )
    committed = {(case_id, v["version"]) for case_id, case in manifest["cases"].items() for v in case["versions"]}
    for folder in (".", "imagesTr", "labelsTr"):
        for stale in (dataset.root / folder).glob(".*.part*"):
            stale.unlink()
            done.append(f"removed the unfinished file {stale.relative_to(dataset.root)}")
    for case_id in cases:
        case_dir = dataset.root / "versions" / case_id
        for stale in case_dir.glob("*/.*.part*"):
            stale.unlink()
        for version_dir in case_dir.glob("v*"):
            number = version_dir.name[1:]
            if number.isdigit() and (case_id, int(number)) not in committed:
                shutil.rmtree(version_dir)
                done.append(f"discarded the uncommitted save {version_dir.relative_to(dataset.root)}")
        if case_dir.is_dir() and not any(case_dir.iterdir()) and case_id not in manifest["cases"]:
            case_dir.rmdir()
        case = manifest["cases"].get(case_id)
        listed = any(_entry_case(e) == case_id for e in dataset.description().get("training", []))
        if case is not None and case.get("status") == "active":
            before = dataset.description().get("training", [])
            publish(dataset, case_id, dataset.current_version(manifest, case_id))
            if dataset.description().get("training", []) != before:
                done.append(f"published version {case['current']} of case {case_id}")
        elif listed or any(p.exists() for p in (*dataset.image_paths(case_id), dataset.label_path(case_id))):
            unpublish(dataset, case_id)
            done.append(
                f"finished removing case {case_id}" if case else f"dropped {case_id}, which has no saved version"
            )
    if full:
        doc = dataset.description()
        unknown = {_entry_case(e) for e in doc.get("training", [])} - set(dataset.active_cases(manifest))
        if unknown:
            doc["training"] = [e for e in doc["training"] if _entry_case(e) not in unknown]
            dataset.write_description(doc)
            done.append(f"dropped datalist entries with no committed version: {sorted(unknown)}")
    end_write(dataset)
    return done
