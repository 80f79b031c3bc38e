"""``lesionseg models import``: an nnU-Net result folder or export zip copied into the models folder, with a sidecar.

The sidecar (``lesionseg-nnunet.json`` at the top of the imported model) records what nnU-Net does not: the SHA-256 of
every checkpoint (checked again before each run, so an altered file is refused), labels with names and colours, which
labels are lesions, the input modality per channel, and the orientation the model was trained in: ``as stored``
(nnU-Net's own behaviour: the array as the file stores it) or ``RAS`` (models trained on RAS-canonical images).

Extraction is safe: zip members with absolute paths, ``..``, links or special files are refused before anything is
written, and the model appears in the models folder only when complete (a temporary folder, then ``os.replace``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from lesionseg.models.hashcache import HashCache
from lesionseg.models.nnunet import (
    NnunetModelError,
    configuration_folders,
    is_configuration_folder,
    load_configuration,
)
from lesionseg.models.weights import file_hashes

SIDECAR = "lesionseg-nnunet.json"
ORIENTATIONS = ("as stored", "RAS")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _safe_members(archive: zipfile.ZipFile, source: Path) -> list[zipfile.ZipInfo]:
    members = []
    for info in archive.infolist():
        name = info.filename
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
            raise NnunetModelError(f"{source}: refused: member {name!r} would be written outside the model folder")
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            what = "a link" if kind == stat.S_IFLNK else "a special file"
            raise NnunetModelError(f"{source}: refused: member {name!r} is {what}; a model holds plain files only")
        members.append(info)
    return members


def _copy_folder(source: Path, target: Path) -> None:
    for path in source.rglob("*"):
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise NnunetModelError(f"{path}: refused: a link or special file; a model holds plain files only")
    shutil.copytree(source, target)


def _model_root(staged: Path) -> Path:
    """The folder of the staged copy that holds the Dataset folder(s) or is one."""
    if configuration_folders(staged):
        return staged
    candidates = [p for p in staged.rglob("*") if p.is_dir() and configuration_folders(p)]
    if not candidates:
        raise NnunetModelError(
            "no nnU-Net result inside: expected Dataset*/Trainer__Plans__configuration/ with plans.json, dataset.json "
            "and fold_*/checkpoint_final.pth"
        )
    return min(candidates, key=lambda p: len(p.parts))


def import_nnunet_model(
    source: str | Path,
    models_root: str | Path,
    model_id: str | None = None,
    lesion_labels: list[int] | None = None,
    orientation: str = "as stored",
    overwrite: bool = False,
) -> Path:
    """Copy ``source`` (a dataset or trained configuration folder, or an nnUNetv2_export_model_to_zip zip) into
    ``models_root/<id>/``; returns that folder."""
    source = Path(source).expanduser()
    if orientation not in ORIENTATIONS:
        raise NnunetModelError(f"orientation {orientation!r}: give 'as stored' (nnU-Net's own) or 'RAS'")
    if not source.exists():
        raise FileNotFoundError(f"no such model folder or zip: {source}")
    root = Path(models_root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".import-", suffix=".part", dir=root))
    try:
        content = staging / "content"
        if source.is_file():
            if not zipfile.is_zipfile(source):
                raise NnunetModelError(f"{source}: not a zip file; give a folder or an nnU-Net export zip")
            with zipfile.ZipFile(source) as archive:
                archive.extractall(content, members=_safe_members(archive, source))
        elif is_configuration_folder(source):
            # Keep the Dataset folder's name above it: a cascade finds its first stage beside it.
            _copy_folder(source, content / source.resolve().parent.name / source.name)
        else:
            _copy_folder(source, content)
        dataset_folder = _model_root(content)
        model_id = model_id or (dataset_folder.name if dataset_folder != content else source.name).lower()
        if not _ID.match(model_id):
            raise NnunetModelError(f"model id {model_id!r}: use letters, digits, '.', '_' or '-' (give --id)")
        target = root / model_id
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; give another --id, or --overwrite to replace it")
        sidecar = _sidecar(dataset_folder, source, model_id, lesion_labels, orientation)
        final = staging / "model"
        shutil.move(str(dataset_folder), final)
        (final / SIDECAR).write_text(json.dumps(sidecar, indent=2), encoding="utf-8")
        if target.exists():
            old = staging / "old"
            os.replace(target, old)
        os.replace(final, target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _sidecar(dataset_folder: Path, source: Path, model_id: str, lesion_labels, orientation: str) -> dict[str, Any]:
    from lesionseg.inference.nnunet import labels_of

    configurations = configuration_folders(dataset_folder)
    first = load_configuration(next(iter(configurations.values())))
    labels = labels_of(first)
    values = [label.value for label in labels]
    lesions = list(lesion_labels) if lesion_labels is not None else [
        label.value for label in labels if re.search(r"lesion|tumou?r|metasta|cancer|nodule", label.name, re.I)
    ]  # fmt: skip
    unknown = [v for v in lesions if v not in values]
    if unknown:
        raise NnunetModelError(f"lesion label(s) {unknown} are not labels of this model; it has {values}")
    checkpoints = {}
    for path in sorted(dataset_folder.rglob("*.pth")):
        checkpoints[path.relative_to(dataset_folder).as_posix()] = file_hashes(path)["sha256"]
    if not checkpoints:
        raise NnunetModelError(f"{source}: no checkpoints (fold_*/checkpoint_final.pth) to import")
    return {
        "format": "nnunet-v2",
        "id": model_id,
        "source": str(source),
        "imported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "configurations": sorted(configurations),
        "labels": [label.to_dict() for label in labels],
        "lesion_labels": lesions,
        "modality": first.channel_names,
        "orientation": orientation,
        "checkpoints": checkpoints,
    }


def find_sidecar(configuration_folder: Path) -> Path | None:
    """The sidecar of the imported model a configuration folder belongs to (its dataset folder's)."""
    candidate = Path(configuration_folder).parent / SIDECAR
    return candidate if candidate.is_file() else None


def verify_checkpoints(configuration_folder: Path, files: list[Path]) -> bool:
    """Check ``files`` against the SHA-256 recorded at import; True when checked, False for a folder never imported.

    A changed file, or one the import did not record, is refused naming it.
    """
    sidecar_path = find_sidecar(configuration_folder)
    if sidecar_path is None:
        return False
    check_against_sidecar(sidecar_path, files)
    return True


def check_against_sidecar(sidecar_path: Path, files: list[Path], cache: HashCache | None = None) -> None:
    """Refuse any of ``files`` whose SHA-256 is not the one the sidecar recorded at import.

    ``cache`` (the model list only) answers for a file unchanged since it was last hashed; a run passes none and
    hashes what it loads every time (see ``hashcache`` for what the cache trusts).
    """
    try:
        recorded = json.loads(sidecar_path.read_text(encoding="utf-8"))["checkpoints"]
    except (ValueError, KeyError, TypeError) as error:
        raise NnunetModelError(f"{sidecar_path}: unreadable sidecar ({error}); import the model again") from error
    for path in files:
        relative = path.relative_to(sidecar_path.parent).as_posix()
        if relative not in recorded:
            raise NnunetModelError(
                f"{path}: refused: this checkpoint was not part of the imported model (no hash recorded in "
                f"{sidecar_path.name}); import the model again to accept it"
            )
        actual = (cache.hashes(path) if cache is not None else file_hashes(path))["sha256"]
        if actual != recorded[relative]:
            raise NnunetModelError(
                f"{path}: refused: its SHA-256 {actual[:12]}... differs from {recorded[relative][:12]}... recorded at "
                "import, so the file was changed or damaged; import the model again from its source"
            )


def imported_model_folder(model: str | Path, models_root: str | Path | None) -> Path | None:
    """``models_root/<model>`` when ``model`` is the id of an imported nnU-Net model."""
    from lesionseg.models.registry import models_dir

    text = str(model)
    if not _ID.match(text):
        return None
    folder = models_dir(models_root) / text
    return folder if (folder / SIDECAR).is_file() else None


def imported_models(models_root: str | Path | None = None, cache: HashCache | None = None) -> list[dict[str, Any]]:
    """Every imported nnU-Net model with the state of its checkpoints.

    Without ``cache`` every checkpoint is read and hashed again; with it, only those changed since the last listing.
    """
    from lesionseg.models.registry import models_dir

    rows = []
    root = models_dir(models_root)
    if not root.is_dir():
        return rows
    for sidecar_path in sorted(root.glob(f"*/{SIDECAR}")):
        folder = sidecar_path.parent
        row: dict[str, Any] = {"id": folder.name, "engine": "nnunet", "folder": str(folder), "problem": ""}
        try:
            sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
            row.update(
                {key: sidecar.get(key) for key in ("configurations", "lesion_labels", "modality", "orientation")}
            )
            files = [folder / name for name in sidecar["checkpoints"]]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise NnunetModelError(f"checkpoint(s) missing: {', '.join(missing)}; import the model again")
            check_against_sidecar(sidecar_path, files, cache)
            row["verified"] = True
        except (NnunetModelError, ValueError, KeyError, TypeError, OSError) as error:
            row["verified"] = False
            row["problem"] = str(error)
        rows.append(row)
    return rows
