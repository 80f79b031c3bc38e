"""Finding DICOM files in a folder tree and reading the header facts a volume needs."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

# Names that are never image files, whatever their content: macOS AppleDouble forks (``._x``)
# and Finder/Windows litter.  DICOMDIR is a media index, not an image.
# Values above this size (pixel data) are left on disk while headers are read.
_DEFER_SIZE = "4 KB"
_IGNORED_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini", "DICOMDIR"}
# Every stored instance carries these; a file without them is not one.
_SOP_TAGS = ("SOPClassUID", "SOPInstanceUID")
# What places a slice in space and names it: enough to sort a series and reference each slice from an export.
GEOMETRY_TAGS = (
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient",
    "PixelSpacing", "Rows", "Columns", "FrameOfReferenceUID",
)  # fmt: skip


@dataclass(eq=False)
class SliceHeader:
    """What one DICOM file says about itself; large values such as pixel data are not loaded."""

    path: Path
    dataset: Dataset = field(repr=False)

    def text(self, keyword: str, default: str = "") -> str:
        value = self.dataset.get(keyword)
        if value is None or value == "":
            return default
        return str(value).strip()

    def number(self, keyword: str, default: float | None = None) -> float | None:
        value = self.dataset.get(keyword)
        try:
            return float(value) if value not in (None, "") else default
        except (TypeError, ValueError):
            return default

    def floats(self, keyword: str, count: int) -> np.ndarray | None:
        """A multi-valued numeric tag as floats, or None when absent or malformed."""
        value = self.dataset.get(keyword)
        if value is None or value == "":
            return None
        try:
            values = np.array([float(v) for v in (value if isinstance(value, (list, tuple)) else list(value))])
        except (TypeError, ValueError):
            return None
        return values if values.shape == (count,) and np.all(np.isfinite(values)) else None

    @property
    def series_uid(self) -> str:
        return self.text("SeriesInstanceUID", "(no series UID)")

    @property
    def study_uid(self) -> str:
        return self.text("StudyInstanceUID", "(no study UID)")

    @property
    def image_type(self) -> tuple[str, ...]:
        value = self.dataset.get("ImageType")
        if value is None:
            return ()
        values = [value] if isinstance(value, str) else list(value)
        return tuple(str(v).strip().upper() for v in values)

    @property
    def has_pixels(self) -> bool:
        return "Rows" in self.dataset and "Columns" in self.dataset

    @property
    def position(self) -> np.ndarray | None:
        return self.floats("ImagePositionPatient", 3)

    @property
    def orientation(self) -> np.ndarray | None:
        return self.floats("ImageOrientationPatient", 6)

    @property
    def frames(self) -> int:
        value = self.number("NumberOfFrames", 1.0)
        return int(value or 1)

    @property
    def transfer_syntax(self) -> str:
        meta = getattr(self.dataset, "file_meta", None)
        uid = meta.get("TransferSyntaxUID") if meta is not None else None
        return str(uid) if uid else "(implicit little endian, no meta header)"


@dataclass
class FolderContents:
    """The outcome of walking a folder: DICOM headers, unreadable DICOM files, and skipped others."""

    headers: list[SliceHeader]
    unreadable: list[tuple[Path, str]]
    skipped: list[Path]
    special: list[tuple[Path, str]] = field(default_factory=list)  # not regular files: never opened


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        # Hidden folders (.git, .Trashes, .Spotlight-V100) never hold a user's series.
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            yield Path(root) / name


def special_file_kind(path: Path) -> str | None:
    """What ``path`` is when it is not a regular file (a link to one counts as one), else None.

    Opening a named pipe blocks until a writer appears, and a link to /dev/zero or /dev/urandom never
    ends: the walk must not read either, so only regular files are ever opened.
    """
    try:
        mode = path.stat().st_mode  # follows links: a link to a regular file is fine
    except OSError as error:
        return "a broken link" if path.is_symlink() else f"cannot be examined ({error.strerror or error})"
    if stat.S_ISREG(mode):
        return None
    for test, kind in (
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return f"{kind}{' (through a link)' if path.is_symlink() else ''}"
    return "not a regular file"


def _ignored_by_name(path: Path) -> bool:
    return path.name.startswith("._") or path.name in _IGNORED_NAMES


def _has_dicm_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _check_native_pixel_length(path: Path, dataset: Dataset) -> None:
    """Raise when uncompressed pixel data is shorter than Rows x Columns x frames needs."""
    meta = getattr(dataset, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    bits = int(dataset.get("BitsAllocated", 0) or 0)
    if (syntax is not None and syntax.is_compressed) or bits < 8:
        return  # encapsulated frames are checked by the decoder; 1-bit data packs across bytes
    element = dataset.get_item("PixelData")
    if isinstance(element, RawDataElement):
        if element.length == 0xFFFFFFFF:
            return
        available = min(element.length, max(path.stat().st_size - element.value_tell, 0))
    else:
        available = len(element.value or b"")
    frames = int(float(dataset.get("NumberOfFrames", 1) or 1))
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    expected = int(dataset.Rows) * int(dataset.Columns) * samples * (bits // 8) * frames
    if available < expected:
        raise ValueError(f"the pixel data holds {available} of {expected} bytes: the file is truncated or damaged")


def read_header(path: Path, tags: Sequence[str] | None = None) -> SliceHeader | None:
    """The header of ``path``; None when it is not DICOM; raises when it is DICOM but broken.

    With ``tags``, only those elements (and the SOP UIDs) are parsed, and the completeness checks, which need the
    whole header, are skipped: several times quicker when only a slice's place is wanted (:data:`GEOMETRY_TAGS`).
    """
    if tags is None:
        options: dict = {"defer_size": _DEFER_SIZE}
    else:
        options = {"stop_before_pixels": True, "specific_tags": list(dict.fromkeys([*tags, *_SOP_TAGS]))}
    if _has_dicm_magic(path):
        dataset = pydicom.dcmread(path, **options)
        if tags is None:
            _check_complete(path, dataset)
        return SliceHeader(path, dataset)
    # Files without a preamble (old ACR-NEMA style exports) are accepted only when they parse
    # and carry the identifiers of a stored instance; random bytes rarely do both.
    try:
        dataset = pydicom.dcmread(path, force=True, **options)
        if any(keyword not in dataset for keyword in _SOP_TAGS):
            return None
        str(dataset.SOPInstanceUID)
    except Exception:  # noqa: BLE001 - anything that fails to parse here is simply not DICOM
        return None
    return SliceHeader(path, dataset)


def _check_complete(path: Path, dataset: Dataset) -> None:
    # A file that announces itself as DICOM and fails to parse is reported, never dropped.
    # pydicom stops quietly at the end of a truncated file, so completeness is checked here.
    for keyword in _SOP_TAGS:
        if keyword not in dataset:
            raise ValueError(f"the header ends before {keyword}: the file is truncated or damaged")
    is_image = "Rows" in dataset or "Image Storage" in getattr(dataset.SOPClassUID, "name", "")
    if is_image and "PixelData" not in dataset:
        raise ValueError("an image without pixel data: the file is truncated or damaged")
    if is_image:
        _check_native_pixel_length(path, dataset)


def find_dicom_files(folder: str | os.PathLike, tags: Sequence[str] | None = None) -> FolderContents:
    """Read the header of every DICOM file under ``folder``, recursively (only ``tags``: see :func:`read_header`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    headers: list[SliceHeader] = []
    unreadable: list[tuple[Path, str]] = []
    skipped: list[Path] = []
    special: list[tuple[Path, str]] = []
    for path in _walk(folder):
        kind = special_file_kind(path)
        if kind is not None:
            special.append((path, kind))
            continue
        if _ignored_by_name(path):
            skipped.append(path)
            continue
        try:
            header = read_header(path, tags)
        except Exception as error:  # noqa: BLE001 - a broken file is listed with its reason, not raised mid-walk
            unreadable.append((path, f"{type(error).__name__}: {error}"))
            continue
        if header is None:
            skipped.append(path)
        else:
            headers.append(header)
    return FolderContents(headers, unreadable, skipped, special)
