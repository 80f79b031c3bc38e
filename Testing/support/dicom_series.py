"""Synthetic DICOM series for the reader's tests: written by our writer, then edited to set one trap."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless

from lesionseg.dicom import write_ct_series
from lesionseg.dicom.write import ds
from lesionseg.image import Image


def linear_phantom(shape_kji=(6, 10, 12), spacing=(0.8, 0.9, 2.5), origin=(-10.0, 20.0, 30.0), direction=None):
    """Values linear in i, j and k, so linear interpolation between slices is exact."""
    k, j, i = np.indices(shape_kji)
    values = (100 * k + 7 * j + i - 1000).astype(np.int16)
    return Image(values, spacing, origin, np.eye(3) if direction is None else direction)


def edit_files(paths: list[Path], change: Callable[[int, FileDataset], None]) -> None:
    """Apply ``change(index, dataset)`` to each file and save it in place."""
    for index, path in enumerate(paths):
        dataset = pydicom.dcmread(path)
        change(index, dataset)
        dataset.save_as(path, enforce_file_format=True)


def set_position(dataset: FileDataset, position) -> None:
    dataset.ImagePositionPatient = [ds(v) for v in position]


def stored(dataset: FileDataset) -> np.ndarray:
    return dataset.pixel_array.astype(np.int64)


COMPRESSED_SYNTAXES = {
    "RLE": RLELossless,
    "JPEG-LS": JPEGLSLossless,
    "JPEG2000": JPEG2000Lossless,
    "JPEG-lossless": JPEGLosslessSV1,
}


def _gdcm_compress(path: Path, syntax_uid: str) -> None:
    # pydicom has no JPEG Lossless encoder; GDCM (python-gdcm) writes it.
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise RuntimeError(f"GDCM cannot read {path}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(syntax_uid)))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"GDCM cannot encode {path} as {syntax_uid}")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"GDCM cannot write {path}")


def compress_files(paths: list[Path], name: str) -> None:
    """Re-encode each file losslessly with the transfer syntax called ``name``."""
    uid = COMPRESSED_SYNTAXES[name]
    for path in paths:
        if uid == JPEGLosslessSV1:
            _gdcm_compress(path, uid)
            continue
        dataset = pydicom.dcmread(path)
        dataset.compress(uid)
        dataset.save_as(path, enforce_file_format=True)
        if pydicom.dcmread(path).file_meta.TransferSyntaxUID != uid:
            raise RuntimeError(f"{path} was not re-encoded as {name}")


def write_phantom(folder: Path, image: Image | None = None, **kwargs) -> list[Path]:
    return write_ct_series(linear_phantom() if image is None else image, folder, **kwargs)
