"""Checks every command makes before it writes: never onto an input, never over a result unasked, never blind.

They run before any work, so a mistyped ``--output`` costs a second, not an inference, and never a user's data.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from lesionseg.errors import UserError
from lesionseg.io.atomic import remove_partial_files

Input = str | Path | None
PROBE_PREFIX = ".lesionseg-write-test."


def _same(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    # Hard links, bind mounts and case-insensitive file systems: the file system knows best.
    with contextlib.suppress(OSError):
        return os.path.samefile(a, b)
    return False


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    if folder in path.parents:
        return True
    # The path's nearest existing folder may be the input folder under another name (a link, a bind mount).
    for parent in path.parents:
        if parent.exists():
            return _same(parent, folder) or any(_same(p, folder) for p in parent.parents if p.exists())
    return False


def refuse_inputs(output: Path, inputs: Iterable[Input], flag: str = "--output") -> None:
    """Refuse an output that is one of the inputs, or lies inside an input folder (a DICOM series...)."""
    for given in inputs:
        if given is None:
            continue
        source = Path(given)
        if not source.exists():
            continue
        if output.exists() and _same(output, source) or output.resolve() == source.resolve():
            raise UserError(f"{flag} {output} is also an input ({source}); choose another {flag} path")
        if source.is_dir() and _inside(output, source):
            raise UserError(f"{flag} {output} lies inside the input folder {source}; write it outside that folder")


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def _probe_writable(folder: Path, flag: str, output: Path) -> None:
    # os.access says yes to root on a read-only mount; creating a file tells the truth.
    try:
        fd, name = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=folder)
    except OSError as error:
        raise UserError(
            f"{flag} {output}: cannot write in {folder} ({error.strerror}); choose a folder you may write to"
        ) from error
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)


def _check_parent(output: Path, flag: str) -> None:
    existing = _nearest_existing(output.parent)
    if not existing.is_dir():
        raise UserError(f"{flag} {output}: {existing} is a file, not a folder; fix the path")
    _probe_writable(existing, flag, output)


def check_output(
    path: str | Path,
    inputs: Iterable[Input] = (),
    overwrite: bool = False,
    flag: str = "--output",
) -> Path:
    """Check an output file before any work: returns it as a Path, or raises UserError naming the fix.

    Refused: an output that is an input or inside an input folder; a folder; an existing file without
    ``overwrite``; a place that cannot be written.  Leftover ``.part`` files of an earlier, killed run that
    wrote the same output are removed.
    """
    output = Path(path)
    refuse_inputs(output, inputs, flag)
    if output.is_dir():
        raise UserError(f"{flag} {output} is a folder; name a file (for example {output / 'result.nii.gz'})")
    if output.exists() and not overwrite:
        raise UserError(f"{flag} {output} already exists; add --overwrite to replace it, or choose another name")
    _check_parent(output, flag)
    remove_partial_files(output)
    return output


def check_output_folder(
    path: str | Path,
    inputs: Iterable[Input] = (),
    overwrite: bool = False,
    flag: str = "--output",
    may_hold: Iterable[str] = (),
) -> Path:
    """Check an output folder before any work: returns it as a Path, or raises UserError naming the fix.

    Refused: a folder that is an input or inside one; a file; a folder that holds anything but the names in
    ``may_hold``, without ``overwrite``; a place that cannot be written.  Leftover ``.part`` files directly in
    the folder are removed.
    """
    folder = Path(path)
    refuse_inputs(folder, inputs, flag)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder} is a file; name a folder")
    allowed = set(may_hold)
    if folder.is_dir():
        # Another rank of the same torchrun may be probing the folder at this moment: its probe is no content.
        ignored = lambda name: name in allowed or _is_part(name) or name.startswith(PROBE_PREFIX)  # noqa: E731
        extra = [p.name for p in folder.iterdir() if not ignored(p.name)]
        if extra and not overwrite:
            raise UserError(
                f"{flag} {folder} is not empty (it holds {', '.join(sorted(extra)[:3])}"
                f"{'...' if len(extra) > 3 else ''}); add --overwrite to write into it, or choose a new folder"
            )
        _probe_writable(folder, flag, folder)
        for leftover in folder.iterdir():
            if _is_part(leftover.name):
                with contextlib.suppress(OSError):
                    leftover.unlink()
    else:
        _check_parent(folder, flag)
    return folder


def remove_stale_folders(folder: str | Path, prefix: str) -> None:
    """Delete hidden staging folders named ``prefix*`` that a killed earlier run left in ``folder``."""
    import shutil

    folder = Path(folder)
    if folder.is_dir():
        for leftover in folder.glob(prefix + "*"):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)


def _is_part(name: str) -> bool:
    # atomic_path's temporary files: ".<stem>.<8 random characters>.part<suffix>"
    if not name.startswith(".") or ".part" not in name:
        return False
    stem_and_random = name[1:].split(".part", 1)[0]
    stem, _, random = stem_and_random.rpartition(".")
    return bool(stem) and len(random) == 8 and all(c.isalnum() or c == "_" for c in random)
