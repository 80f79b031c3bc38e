"""Adding and removing training cases: every save is a new version, nothing is overwritten."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lesionseg.datasets.store import (
    FILE_ENDING,
    Dataset,
    begin_write,
    check_case_id,
    end_write,
    image_roles,
    publish,
    recover,
    sha256_file,
    step,
    unpublish,
    utc_now,
)
from lesionseg.image import Image, require_same_grid
from lesionseg.io import read_image, write_image
from lesionseg.labels import LabelInfo

if TYPE_CHECKING:  # the inference package is imported only when a case has several channels
    from lesionseg.inference.channels import ChannelInput

PROVENANCE_KEYS = (
    "annotator", "source_model", "source_model_version", "patient_key", "study_uid", "series_uid", "note", "tool",
)  # fmt: skip


def patient_key(patient_id: str) -> str:
    """A stand-in for a PatientID: equal for equal IDs (so splits keep a patient together), yet not the ID."""
    return hashlib.sha256(f"lesionseg-patient:{patient_id.strip()}".encode()).hexdigest()[:20]


def image_content_sha256(image: Image) -> str:
    """A hash of the voxel values and grid size, whatever the file or pixel type they came in.

    Values are hashed as float64, one slice at a time, so an int16 CT and the same CT saved as float
    match, and a large volume needs no full-size copy.
    """
    digest = hashlib.sha256(repr(tuple(int(n) for n in image.array.shape)).encode())
    for plane in image.array:
        digest.update(np.ascontiguousarray(plane, dtype=np.float64).tobytes())
    return digest.hexdigest()


def case_holding_image(dataset: Dataset, manifest: Mapping[str, Any], image: Image, content_sha256: str) -> str | None:
    """The active case whose current image has these voxels, if any."""
    for case_id in dataset.active_cases(manifest):
        version = dataset.current_version(manifest, case_id)
        known = version.get("image_content_sha256")
        if known is None:  # saved before contents were hashed: read it only when its size could match
            if list(version.get("size_ijk", [])) != list(image.size):
                continue
            known = image_content_sha256(read_image(dataset.root / version["files"]["image"]["path"]))
        if known == content_sha256:
            return case_id
    return None


@dataclass(frozen=True)
class CaseRecord:
    """What a save produced: the case, its new version, and where the files are."""

    case_id: str
    version: int
    image: Path
    label: Path
    labels_present: tuple[int, ...]
    provenance: Mapping[str, Any] = field(default_factory=dict)
    images: tuple[Path, ...] = ()  # the current image of every channel (``image`` is the first)


def _segment_names(labels: Iterable[LabelInfo] | Mapping[Any, Any] | None) -> dict[int, str]:
    """{input value: segment name} from LabelInfo objects or a {value: name} mapping."""
    if labels is None:
        return {}
    if isinstance(labels, Mapping):
        return {int(v): str(n) for v, n in labels.items() if int(v) != 0}
    return {info.value: info.name for info in labels}


def remap_label(
    label: Image,
    segment_names: Mapping[int, str],
    dataset_labels: Mapping[int, str],
    label_map: Mapping[str, int] | None = None,
    drop_unmapped: bool = False,
) -> Image:
    """Turn an input labelmap into the dataset's label values.

    A segment goes to ``label_map[name]`` when given, else to the dataset label of the same
    name (case-insensitive); a labelmap with no names keeps its values.  ``NAME=0`` drops a segment;
    ``drop_unmapped`` drops every named segment that matches nothing (else that is an error).
    """
    values = [int(v) for v in np.unique(label.array) if v != 0]
    by_name = {name.lower(): value for value, name in dataset_labels.items()}
    wanted = {str(k).lower(): int(v) for k, v in (label_map or {}).items()}
    for name, value in wanted.items():
        if value not in dataset_labels:
            raise ValueError(
                f"--label-map {name}={value}: {value} is not a label of this dataset "
                f"({_describe(dataset_labels)}); use one of those values or 0 to drop the segment"
            )
    known_names = {n.lower() for n in segment_names.values()}
    stray = sorted(set(wanted) - known_names) if segment_names else []
    if stray:
        raise ValueError(
            f"--label-map names {stray}, which the segmentation does not hold (it has {sorted(segment_names.values())})"
        )
    lookup = np.zeros(max(values, default=0) + 1, dtype=np.int64)
    for value in values:
        name = segment_names.get(value)
        if name is None:
            if segment_names:
                raise ValueError(f"the labelmap holds value {value}, which its labels.json/header does not name")
            target = wanted.get(str(value), value)
            if target not in dataset_labels:
                raise ValueError(
                    f"label value {value} is not known in dataset.json ({_describe(dataset_labels)}); "
                    f"map it with --label-map {value}=VALUE or add the label to the dataset"
                )
        elif name.lower() in wanted:
            target = wanted[name.lower()]
        elif name.lower() in by_name:
            target = by_name[name.lower()]
        elif drop_unmapped:
            target = 0
        else:
            raise ValueError(
                f"segment {name!r} (value {value}) matches no label of the dataset ({_describe(dataset_labels)}); "
                f"map it with --label-map '{name}=VALUE' (0 drops it) or pass --drop-unmapped"
            )
        lookup[value] = target
    if np.any(label.array < 0):
        raise ValueError("the labelmap holds negative values; label values must be 0 or positive integers")
    if np.issubdtype(label.array.dtype, np.floating) and not np.all(np.mod(label.array, 1) == 0):
        raise ValueError("the labelmap holds fractional values; give an integer labelmap, not a probability map")
    out = lookup[label.array.astype(np.int64)]
    dtype = np.uint8 if max(dataset_labels) < 256 else np.uint16
    return label.with_array(out.astype(dtype))


def _describe(labels: Mapping[int, str]) -> str:
    return ", ".join(f"{v}={n}" for v, n in sorted(labels.items()))


def _clean_provenance(provenance: Mapping[str, Any] | None) -> dict[str, Any]:
    out = {k: v for k, v in dict(provenance or {}).items() if v not in (None, "")}
    patient = out.pop("patient_id", None)
    if patient is not None and str(patient).strip():
        out["patient_key"] = patient_key(str(patient))
    source = out.get("source_model")
    if isinstance(source, str) and "@" in source and "source_model_version" not in out:
        out["source_model"], out["source_model_version"] = source.split("@", 1)
    out["ai_assisted"] = bool(out.get("source_model"))
    out.setdefault("saved_at", utc_now())
    json.dumps(out)  # provenance must be plain JSON
    return out


def _next_case_id(manifest: Mapping[str, Any]) -> str:
    numbers = [int(m.group(1)) for c in manifest["cases"] if (m := re.fullmatch(r"case_(\d+)", c))]
    return f"case_{max(numbers, default=0) + 1:04d}"


def channels_on_first_grid(channels: Sequence[ChannelInput]) -> list[Image]:
    """Every channel on the first one's grid (:func:`align_channels`: linear, refusals for other frames of
    reference and no overlap); a channel already on that grid keeps its voxels and voxel type."""
    from lesionseg.inference.channels import align_channels

    aligned = align_channels(channels)
    first = channels[0].image
    return [c.image if c.image.same_grid(first) else moved for c, moved in zip(channels, aligned, strict=True)]


def _case_channels(dataset: Dataset, image: Image | Sequence[Image]) -> list[Image]:
    """One image per channel of the dataset, all on the first's grid, or a ValueError that names the fix."""
    images = [image] if isinstance(image, Image) else list(image)
    names = dataset.channel_names()
    if len(images) != len(names):
        raise ValueError(
            f"{dataset.root} holds {len(names)}-channel cases ({', '.join(names)}) but {len(images)} image(s) were "
            f"given; give one image per channel in that order (dataset add --image {' --image '.join(names)}, "
            "or --channel NAME=PATH)"
        )
    if len(images) == 1:
        return images
    from lesionseg.inference.channels import ChannelInput

    given = [
        ChannelInput(n, f"image {c + 1} of {len(names)}", i) for c, (n, i) in enumerate(zip(names, images, strict=True))
    ]
    return channels_on_first_grid(given)


def add_case(
    dataset_dir: str | Path,
    image: Image | Sequence[Image],
    label: Image,
    labels: Iterable[LabelInfo] | Mapping[Any, Any] | None = None,
    case_id: str | None = None,
    provenance: Mapping[str, Any] | None = None,
    label_map: Mapping[str, int] | None = None,
    drop_unmapped: bool = False,
    same_image: str = "refuse",
) -> CaseRecord:
    """Save ``image`` and ``label`` as a new version of a case (a new case when ``case_id`` is new or None).

    ``image`` is one image, or for a multi-channel dataset one per channel in the dataset's order; further
    channels are resampled onto the first's grid, which ``label`` must lie on.
    ``labels`` names the label's segments (LabelInfo list or {value: name}); the names pick the
    dataset's label values, or ``label_map`` {segment name: dataset value} does.  Provenance keys:
    annotator, source_model (``ID@VERSION``), patient_id (kept only as ``patient_key``, a hash),
    study_uid, series_uid, note.

    An image whose voxels another active case already holds is refused, naming that case: a copy
    saved as a second case would let training validate on the images it trained on.  To change that
    case's label, save it as a new version of it (``case_id`` = that case), or pass ``same_image="new_version"``
    with no ``case_id``: an image already held then becomes a new version of the case holding it (an annotator's
    corrected mask), decided under the dataset's lock.
    """
    if same_image not in ("refuse", "new_version"):
        raise ValueError(f"same_image must be 'refuse' or 'new_version', not {same_image!r}")
    dataset = Dataset(dataset_dir)
    images = _case_channels(dataset, image)
    image = images[0]
    require_same_grid(label, image, what="label")
    dataset_labels = dataset.labels()
    mapped = remap_label(label, _segment_names(labels), dataset_labels, label_map, drop_unmapped)
    present = tuple(int(v) for v in np.unique(mapped.array))
    record_provenance = _clean_provenance(provenance)
    content = image_content_sha256(image)
    with dataset.lock():
        recover(dataset)
        manifest = dataset.manifest()
        case_id = check_case_id(case_id) if case_id else None
        holder = case_holding_image(dataset, manifest, image, content)
        if holder is not None and case_id is None and same_image == "new_version":
            case_id = holder
        if holder is not None and holder != case_id:
            raise ValueError(
                f"this image is already case {holder} of {dataset.root} (same voxels); a second copy would put the "
                f"same image in training and validation. To replace its label, save a new version of it "
                f"(--case-id {holder}); to take it out, `lesionseg dataset remove {dataset.root} {holder}` first"
            )
        case_id = case_id or _next_case_id(manifest)
        case = manifest["cases"].get(case_id, {"status": "active", "current": 0, "versions": []})
        number = max((v["version"] for v in case["versions"]), default=0) + 1
        folder = dataset.version_dir(case_id, number)
        begin_write(dataset, case_id, "add")
        written = {}
        for role, channel in zip(image_roles(len(images)), images, strict=True):
            written[role] = write_image(channel, folder / f"{role}{FILE_ENDING}")
            step(f"{role}-written")
        written["label"] = write_image(mapped, folder / f"label{FILE_ENDING}")
        step("label-written")
        lesion_labels = set(dataset.lesion_labels())
        version = {
            "version": number,
            "created": record_provenance["saved_at"],
            "files": {
                role: {"path": dataset.relative(path)[2:], "sha256": sha256_file(path)}
                for role, path in written.items()
            },
            "image_content_sha256": content,
            "size_ijk": list(image.size),
            "spacing_mm": [round(float(s), 6) for s in image.spacing],
            "labels_present": [v for v in present if v != 0],
            "has_lesion": bool(lesion_labels & set(present)),
            "provenance": record_provenance,
        }
        case["versions"].append(version)
        case["current"] = number
        case["status"] = "active"
        manifest["cases"][case_id] = case
        dataset.write_manifest(manifest)
        step("manifest-committed")
        publish(dataset, case_id, version)
        end_write(dataset)
    return CaseRecord(
        case_id,
        number,
        dataset.image_path(case_id),
        dataset.label_path(case_id),
        tuple(version["labels_present"]),
        record_provenance,
        tuple(dataset.image_paths(case_id)),
    )


def remove_case(dataset_dir: str | Path, case_id: str, reason: str = "", by: str = "") -> int:
    """Take a case out of training; its files stay under versions/.  Returns the trash version number."""
    dataset = Dataset(dataset_dir)
    with dataset.lock():
        recover(dataset)
        manifest = dataset.manifest()
        case = manifest["cases"].get(case_id)
        if case is None or case.get("status") != "active":
            active = dataset.active_cases(manifest)
            raise ValueError(f"no active case {case_id!r} in {dataset.root}; active cases: {active[:20]}")
        number = max(v["version"] for v in case["versions"]) + 1
        begin_write(dataset, case_id, "remove")
        case["versions"].append(
            {
                "version": number,
                "created": utc_now(),
                "removed": True,
                "restores_from": case["current"],
                "provenance": {k: v for k, v in {"removed_by": by, "reason": reason}.items() if v},
            }
        )
        case["status"] = "removed"
        dataset.write_manifest(manifest)
        step("manifest-committed")
        unpublish(dataset, case_id)
        end_write(dataset)
    return number


def read_segment_names(label_path: str | Path) -> dict[int, str]:
    """Segment names beside a labelmap file: a ``.seg.nrrd`` header or a ``labels.json`` sidecar."""
    path = Path(label_path)
    if path.name.lower().endswith(".seg.nrrd"):
        from lesionseg.io.nrrd import read_nrrd

        _, header = read_nrrd(path)
        names: dict[int, str] = {}
        for key, value in header.items():
            match = re.fullmatch(r"Segment(\d+)_Name", key)
            if match:
                number = match.group(1)
                names[int(header.get(f"Segment{number}_LabelValue", int(number) + 1))] = str(value)
        return names
    for sidecar in (path.with_name("labels.json"), path.with_name(path.name.split(".")[0] + ".labels.json")):
        if sidecar.is_file():
            return _names_from_json(json.loads(sidecar.read_text(encoding="utf-8")), sidecar)
    return {}


def _names_from_json(doc: Any, where: Path) -> dict[int, str]:
    if isinstance(doc, Mapping) and "labels" in doc:
        doc = doc["labels"]
    if isinstance(doc, list):
        return {int(item["value"]): str(item["name"]) for item in doc if int(item["value"]) != 0}
    if isinstance(doc, Mapping):
        if all(str(k).lstrip("-").isdigit() for k in doc):
            return {int(k): str(v) for k, v in doc.items() if int(k) != 0}
        return {int(v): str(k) for k, v in doc.items() if int(v) != 0}
    raise ValueError(f"{where}: expected a list of {{value, name}} or a value→name object")


_UID_KEYS = (
    ("patient_id", ("PatientID", "patient_id")),
    ("study_uid", ("StudyInstanceUID", "study_uid")),
    ("series_uid", ("SeriesInstanceUID", "series_uid")),
)


def read_dicom_folder_provenance(folder: str | Path) -> dict[str, Any]:
    """PatientID and study and series UIDs of the first DICOM file in a series folder."""
    import pydicom

    for path in sorted(Path(folder).iterdir()):
        if not path.is_file():
            continue
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - any file that is not DICOM (a README, a DICOMDIR's siblings) is skipped
            continue
        if "SeriesInstanceUID" in header:
            return {key: str(header.get(names[0], "")) for key, names in _UID_KEYS if header.get(names[0])}
    return {}


def read_sidecar_provenance(image_path: str | Path) -> dict[str, Any]:
    """PatientID and DICOM UIDs from a JSON sidecar beside the image (``ct.nii.gz`` → ``ct.json``), or from
    the files of a DICOM series folder."""
    path = Path(image_path)
    out = read_dicom_folder_provenance(path) if path.is_dir() else {}
    sidecar = path.with_name((path.name if path.is_dir() else path.name.split(".")[0]) + ".json")
    if not sidecar.is_file():
        return out
    try:
        doc = json.loads(sidecar.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{sidecar}: the sidecar beside the image is not valid JSON ({error})") from None
    for key, names in _UID_KEYS:
        for name in names:
            if doc.get(name):
                out[key] = str(doc[name])
                break
    return out


def add_case_from_files(
    dataset_dir: str | Path,
    image_path: str | Path | Sequence[str | Path],
    label_path: str | Path,
    label_map: Mapping[str, int] | None = None,
    case_id: str | None = None,
    provenance: Mapping[str, Any] | None = None,
    drop_unmapped: bool = False,
    named_channels: Sequence[str] = (),
) -> CaseRecord:
    """The command line's ``dataset add``: read the files, find segment names and sidecar UIDs, save.

    ``image_path`` is one path, or one per channel of a multi-channel dataset in its order; ``named_channels``
    gives them as ``NAME=PATH`` instead.  Provenance comes from the first channel's sidecar or DICOM files.
    """
    from lesionseg.inference.channels import assign_channels, read_channel

    paths = [image_path] if isinstance(image_path, (str, Path)) else list(image_path)
    names = Dataset(dataset_dir).channel_names()
    if len(names) == 1 and len(paths) == 1 and not named_channels:
        image: Image | list[Image] = read_image(paths[0])
        sources = [str(paths[0])]
    else:
        assigned = assign_channels(
            names, [str(p) for p in paths], named_channels, owner="this dataset", option="--image"
        )
        image = channels_on_first_grid([read_channel(name, path) for name, path in assigned])
        sources = [path for _, path in assigned]
    label = read_image(label_path)
    merged = {**read_sidecar_provenance(sources[0]), **{k: v for k, v in (provenance or {}).items() if v}}
    merged.setdefault("image_source", str(Path(sources[0]).name))
    if len(sources) > 1:
        merged.setdefault("channel_sources", [str(Path(s).name) for s in sources])
    segment_names = read_segment_names(label_path)
    return add_case(dataset_dir, image, label, segment_names, case_id, merged, label_map, drop_unmapped)
