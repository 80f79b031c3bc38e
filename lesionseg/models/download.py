"""Downloading weights: stream to a temp file beside the target, hash, refuse a mismatch, then ``os.replace``.

Nothing is moved into place before its hash is checked, so an interrupted or altered download never looks
installed.  Archives are inspected before anything is read from them: absolute paths, ``..`` members, links and
device files make the whole archive refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from lesionseg.models.spec import ModelSpec
from lesionseg.models.weights import WeightsError, check_hashes, file_hashes, write_verified_record

_CHUNK = 1 << 20
ProgressFn = Callable[[int, int | None], None]


class UnsafeArchiveError(WeightsError):
    """An archive with members that would land outside the extraction folder, or links."""


def _check_member_name(name: str, archive: Path) -> str:
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive.name}: refused: member {name!r} has an absolute path")
    if ".." in posix.parts:
        raise UnsafeArchiveError(f"{archive.name}: refused: member {name!r} climbs out of the folder with '..'")
    return str(posix)


def _zip_members(archive: Path, handle: zipfile.ZipFile) -> list[tuple[str, zipfile.ZipInfo]]:
    out = []
    for info in handle.infolist():
        name = _check_member_name(info.filename, archive)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UnsafeArchiveError(f"{archive.name}: refused: member {name!r} is a symbolic link")
        out.append((name, info))
    return out


def _tar_members(archive: Path, handle: tarfile.TarFile) -> list[tuple[str, tarfile.TarInfo]]:
    out = []
    for info in handle.getmembers():
        name = _check_member_name(info.name, archive)
        if info.issym() or info.islnk():
            raise UnsafeArchiveError(f"{archive.name}: refused: member {name!r} is a link")
        if not (info.isfile() or info.isdir()):
            raise UnsafeArchiveError(f"{archive.name}: refused: member {name!r} is a device or special file")
        out.append((name, info))
    return out


@contextlib.contextmanager
def _open_members(archive: Path, kind: str) -> Iterator[list[tuple[str, Callable[[], object] | None]]]:
    """Yield (name, opener) for every member after checking them all; opener is None for folders."""
    if kind == "zip":
        with zipfile.ZipFile(archive) as handle:
            members = _zip_members(archive, handle)
            yield [(name, None if info.is_dir() else (lambda info=info: handle.open(info))) for name, info in members]
    elif kind == "tar":
        with tarfile.open(archive) as handle:
            members = _tar_members(archive, handle)
            yield [
                (name, None if info.isdir() else (lambda info=info: handle.extractfile(info))) for name, info in members
            ]
    else:
        raise ValueError(f"unknown archive type {kind!r}; use zip or tar")


def archive_kind(path: Path) -> str:
    if zipfile.is_zipfile(path):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    raise WeightsError(f"{path.name}: neither a zip nor a tar archive")


def safe_extract(archive: Path, destination: Path) -> list[Path]:
    """Extract every member under ``destination`` after refusing unsafe archives; returns the files written."""
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    root = destination.resolve()
    written = []
    with _open_members(Path(archive), archive_kind(Path(archive))) as members:
        for name, opener in members:
            target = (root / name).resolve()
            if root != target and root not in target.parents:
                raise UnsafeArchiveError(f"{Path(archive).name}: refused: member {name!r} resolves outside the folder")
            if opener is None:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with opener() as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink, _CHUNK)
            written.append(target)
    return written


def _extract_member(archive: Path, member: str, kind: str, target_tmp: Path) -> None:
    wanted = member.strip("/")
    with _open_members(archive, kind) as members:
        matches = [(n, o) for n, o in members if o is not None and (n == wanted or n.endswith("/" + wanted))]
        if len(matches) != 1:
            found = [n for n, o in members if o is not None][:10]
            raise WeightsError(
                f"{archive.name}: expected exactly one member named {member!r}, found {len(matches)}; members: {found}"
            )
        with matches[0][1]() as source, open(target_tmp, "wb") as sink:
            shutil.copyfileobj(source, sink, _CHUNK)


def download_to(url: str, handle, progress: ProgressFn | None = None, timeout: float = 60.0) -> str:
    """Stream ``url`` into an open binary file; returns the SHA-256 of what was written."""
    if not url.lower().startswith(("http://", "https://")):
        raise ValueError(f"only http(s) downloads are supported, got {url!r}")
    sha = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "lesionseg"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (scheme checked above)
        total = response.headers.get("Content-Length")
        total = int(total) if total and total.isdigit() else None
        done = 0
        while chunk := response.read(_CHUNK):
            handle.write(chunk)
            sha.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    handle.flush()
    os.fsync(handle.fileno())
    return sha.hexdigest()


def download_weights(spec: ModelSpec, progress: ProgressFn | None = None, timeout: float = 60.0) -> Path:
    """Fetch, verify and install a spec's weights into ``spec.folder``; returns the installed path.

    The spec's sha256 and md5 (those given) must match the weights file; when the spec has no sha256,
    the one computed here is recorded in ``weights.verified.json`` and checked on every later use.
    """
    if not spec.weights.url:
        raise WeightsError(f"model {spec.id!r} has no weights URL; copy its weights to {spec.weights_path}")
    if spec.folder is None:
        raise ValueError(f"model {spec.id!r} has no folder to install its weights into")
    folder = Path(spec.folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / spec.weights.path
    fd, download_name = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=folder)
    download_tmp = Path(download_name)
    weights_tmp = folder / f".{spec.weights.path}.{os.getpid()}.part"
    try:
        with os.fdopen(fd, "wb") as handle:
            try:
                download_to(spec.weights.url, handle, progress, timeout)
            except OSError as error:  # URLError, HTTPError, timeouts, resets
                raise WeightsError(
                    f"model {spec.id!r}: could not download {spec.weights.url} ({error}); check the network, or "
                    f"fetch the file elsewhere and copy its weights to {target}"
                ) from error
        if spec.weights.archive:
            _extract_member(download_tmp, spec.weights.member or spec.weights.path, spec.weights.archive, weights_tmp)
            checked = weights_tmp
        else:
            checked = download_tmp
        hashes = check_hashes(checked, spec.weights.sha256, spec.weights.md5, file_hashes(checked))
        if not spec.weights.sha256 and not spec.weights.md5:
            raise WeightsError(
                f"model {spec.id!r}: the spec gives no hash for its weights, so the download cannot be verified; "
                f"add the publisher's sha256 to the spec (this download's sha256 is {hashes['sha256']})"
            )
        os.replace(checked, target)
        write_verified_record(folder, target.name, hashes, spec.weights.url)
    finally:
        for leftover in (download_tmp, weights_tmp):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    return target
