"""Atomic file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _part_affixes(target: Path) -> tuple[str, str]:
    return f".{target.name.split('.')[0]}.", ".part" + ("".join(target.suffixes) or ".tmp")


def partial_files(target: str | Path) -> list[Path]:
    """Temporary files that an interrupted atomic write of ``target`` left beside it."""
    target = Path(target)
    prefix, suffix = _part_affixes(target)
    # mkstemp's random part is 8 characters of [a-z0-9_]: nothing else in the folder matches by accident.
    pattern = re.compile(re.escape(prefix) + r"[a-z0-9_]{8}" + re.escape(suffix) + "$")
    if not target.parent.is_dir():
        return []
    return sorted(p for p in target.parent.iterdir() if pattern.match(p.name))


def remove_partial_files(target: str | Path) -> list[Path]:
    """Delete what :func:`partial_files` finds (a killed earlier run of the same command); returns them."""
    removed = []
    for leftover in partial_files(target):
        with contextlib.suppress(OSError):
            leftover.unlink()
            removed.append(leftover)
    return removed


def _naming_target(error: OSError, target: Path) -> OSError:
    # The temporary name means nothing to the user; the same error type and errno, naming the target.
    return type(error)(error.errno, error.strerror, str(target))


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target``.

    The temporary name keeps the target's full suffix (``.nii.gz``, ``.seg.nrrd``) so that
    writers which pick a format from the name still work.  OS errors name ``target``, not the temporary file.
    """
    target = Path(target)
    prefix, suffix = _part_affixes(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=target.parent)
    except OSError as error:
        if error.errno is None or type(error).__module__ != "builtins":
            raise
        raise _naming_target(error, target) from error
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp makes the file private (0600); give it the mode a plain open() would, so saved
    # files stay readable by whoever could read the folder before.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as error:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        about_tmp = error.filename is None or os.fspath(error.filename) == tmp_name
        if error.errno is None or type(error).__module__ != "builtins" or not about_tmp:
            raise
        raise _naming_target(error, target) from error
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_bytes_atomic(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(target: str | Path, obj: Any) -> None:
    write_bytes_atomic(target, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))
