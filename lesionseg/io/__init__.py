"""Reading and writing images by file name; every write is atomic."""

from __future__ import annotations

import gzip
from pathlib import Path

from lesionseg.errors import UserError, unreadable
from lesionseg.image import Image
from lesionseg.io.atomic import atomic_path

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".nhdr", ".mha", ".mhd")


def image_format(path: str | Path) -> str:
    """The format picked from a file name: 'nifti', 'nrrd' or 'itk'."""
    name = Path(path).name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith((".nrrd", ".nhdr")):
        return "nrrd"
    if name.endswith((".mha", ".mhd")):
        return "itk"
    raise ValueError(
        f"cannot tell the image format of {Path(path).name!r}; use one of {', '.join(IMAGE_SUFFIXES)}"
        " or a DICOM series folder"
    )


def read_image(path: str | Path) -> Image:
    """Read a volume from NIfTI, NRRD, MetaImage, or a folder holding one DICOM series."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such image: {path}")
    if path.is_dir():
        from lesionseg.dicom import read_dicom_volume

        return read_dicom_volume(path)
    fmt = image_format(path)
    try:
        return _read_file(path, fmt)
    except (UserError, MemoryError):
        raise
    except ValueError as error:
        if str(path) in str(error):
            raise
        raise UserError(f"{path}: {error}") from error
    except Exception as error:  # every decoder has its own error types; the user needs the file and the fix
        if isinstance(error, OSError) and error.errno is not None and not isinstance(error, gzip.BadGzipFile):
            raise  # permissions, a vanished file: described as OS errors, with their path
        raise unreadable(path, _FORMAT_NAMES[fmt], error) from error


_FORMAT_NAMES = {"nifti": "a NIfTI image", "nrrd": "a NRRD image", "itk": "a MetaImage"}


def _read_file(path: Path, fmt: str) -> Image:
    if fmt == "nifti":
        from lesionseg.io.nifti import read_nifti

        return read_nifti(path)
    if fmt == "nrrd":
        from lesionseg.io.nrrd import read_nrrd

        return read_nrrd(path)[0]
    import SimpleITK as sitk

    from lesionseg.io.sitk import from_sitk

    return from_sitk(sitk.ReadImage(str(path)))


def write_image(image: Image, path: str | Path, compress: bool = True) -> Path:
    """Write ``image`` atomically in the format its name asks for; returns the path.

    ``compress=False`` stores NRRD, MHA and other ITK formats raw: for files that live a moment (a volume handed
    to a worker), where gzip costs seconds to write and read and saves nothing (NIfTI: the name decides).
    """
    path = Path(path)
    fmt = image_format(path)
    if path.name.lower().endswith((".mhd", ".nhdr")):
        raise ValueError(f"{path.name}: a detached header cannot be written atomically; write .mha or .nrrd")
    with atomic_path(path) as tmp:
        if fmt == "nifti":
            from lesionseg.io.nifti import write_nifti

            write_nifti(image, tmp)
        elif fmt == "nrrd":
            from lesionseg.io.nrrd import write_nrrd

            write_nrrd(image, tmp, compress=compress)
        else:
            import SimpleITK as sitk

            from lesionseg.io.sitk import to_sitk

            sitk.WriteImage(to_sitk(image), str(tmp), useCompression=compress)
    return path
