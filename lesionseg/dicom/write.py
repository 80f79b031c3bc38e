"""Write an :class:`~lesionseg.image.Image` as a DICOM CT series, one file per slice.

Storage of values: Hounsfield units are rounded to integers and stored as signed 16-bit
pixels with ``RescaleSlope`` 1 and ``RescaleIntercept`` -1024 (the usual scanner choice), so
``stored = round(HU) + 1024``.  That is lossless for integer HU in [-31744, 32767 - 1024]; a
value outside that range, or a float value that is not within 0.01 of an integer when
``allow_rounding`` is False, is refused rather than clipped or rounded silently.

Geometry (DICOM patient space is LPS, as is the engine's world):
* ``ImageOrientationPatient`` = direction column i (along a row), then column j (down a column).
* ``PixelSpacing`` = [spacing j, spacing i]: DICOM lists the distance between *rows* first.
* ``ImagePositionPatient`` of slice k = the world position of voxel (0, 0, k).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from lesionseg.image import Image
from lesionseg.io.atomic import atomic_path

RESCALE_INTERCEPT = -1024.0
RESCALE_SLOPE = 1.0
_INT16 = np.iinfo(np.int16)
# Lowest and highest HU that survive the int16 storage with the intercept above.
HU_RANGE = (_INT16.min + RESCALE_INTERCEPT, _INT16.max + RESCALE_INTERCEPT)


def ds(value: float) -> str:
    """A DS string of at most 16 characters with as much precision as fits."""
    return format_number_as_ds(float(value))


def _uid(seed: str | None, *parts: object) -> str:
    # With a seed every UID is a hash of the seed and its role, so a rerun writes identical files.
    if seed is None:
        return generate_uid()
    return generate_uid(entropy_srcs=[seed, *map(str, parts)])


def _stored_values(array: np.ndarray, allow_rounding: bool) -> np.ndarray:
    values = np.asarray(array)
    if np.issubdtype(values.dtype, np.floating):
        rounded = np.rint(values)
        if not allow_rounding:
            worst = float(np.abs(values - rounded).max()) if values.size else 0.0
            if worst > 0.01:
                raise ValueError(
                    f"the image holds fractional values (up to {worst:.3g} from an integer); DICOM CT stores "
                    "integer HU: round the image first or pass allow_rounding=True"
                )
        values = rounded
    lo, hi = float(values.min()), float(values.max())
    if lo < HU_RANGE[0] or hi > HU_RANGE[1]:
        raise ValueError(
            f"values {lo:g}..{hi:g} fall outside the range a CT series can hold losslessly "
            f"({HU_RANGE[0]:g}..{HU_RANGE[1]:g} HU with 16-bit pixels); is this image in HU?"
        )
    return (values.astype(np.int64) - int(RESCALE_INTERCEPT)).astype(np.int16)


def _base_dataset(
    image: Image,
    *,
    patient_id: str,
    patient_name: str,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    series_description: str,
    now: datetime.datetime,
) -> Dataset:
    ni, nj, _ = image.size
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    d = Dataset()
    d.SpecificCharacterSet = "ISO_IR 192"
    d.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    d.SOPClassUID = CTImageStorage
    d.StudyDate = date
    d.SeriesDate = date
    d.AcquisitionDate = date
    d.ContentDate = date
    d.StudyTime = time
    d.SeriesTime = time
    d.AcquisitionTime = time
    d.ContentTime = time
    d.AccessionNumber = ""
    d.Modality = "CT"
    d.Manufacturer = "LesionSeg"
    d.InstitutionName = ""
    d.ReferringPhysicianName = ""
    d.StudyDescription = "LesionSeg"
    d.SeriesDescription = series_description
    d.OperatorsName = ""
    d.ManufacturerModelName = "lesionseg.dicom.write"
    d.PatientName = patient_name
    d.PatientID = patient_id
    d.PatientBirthDate = ""
    d.PatientSex = ""
    d.SliceThickness = ds(image.spacing[2])
    d.KVP = ""
    d.PatientPosition = "HFS"
    # dciodvfy asks for (0020,0060) whenever no image laterality is given; empty means unknown.
    d.Laterality = ""
    d.StudyInstanceUID = study_uid
    d.SeriesInstanceUID = series_uid
    d.StudyID = "1"
    d.SeriesNumber = 1
    d.AcquisitionNumber = 1
    orientation = np.concatenate([image.direction[:, 0], image.direction[:, 1]])
    d.ImageOrientationPatient = [ds(v) for v in orientation]
    d.FrameOfReferenceUID = frame_uid
    d.PositionReferenceIndicator = ""
    d.SamplesPerPixel = 1
    d.PhotometricInterpretation = "MONOCHROME2"
    d.Rows = nj
    d.Columns = ni
    d.PixelSpacing = [ds(image.spacing[1]), ds(image.spacing[0])]
    d.BitsAllocated = 16
    d.BitsStored = 16
    d.HighBit = 15
    d.PixelRepresentation = 1
    d.RescaleIntercept = ds(RESCALE_INTERCEPT)
    d.RescaleSlope = ds(RESCALE_SLOPE)
    d.RescaleType = "HU"
    return d


def write_ct_series(
    image: Image,
    folder: str | os.PathLike,
    *,
    patient_id: str = "LS0001",
    patient_name: str = "Phantom^Synthetic",
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_description: str = "",
    frame_of_reference_uid: str | None = None,
    reverse_file_order: bool = False,
    extra: Mapping[str, Any] | None = None,
    uid_seed: str | None = None,
    allow_rounding: bool = True,
    file_prefix: str = "CT",
) -> list[Path]:
    """Write one CT Image Storage file per slice of ``image`` (HU) into ``folder``.

    Files are named ``{file_prefix}{n:04d}.dcm`` with n following k, or the reverse when
    ``reverse_file_order`` is set (a reader must sort by position, not by name).  ``extra``
    maps DICOM keywords to values set on every file after the defaults (not for the pixel
    module or the rescale, which must match the stored pixels).  ``uid_seed`` makes
    every generated UID deterministic.  Returns the paths in k order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stored = _stored_values(image.array, allow_rounding)
    study_uid = study_uid or _uid(uid_seed, "study")
    series_uid = series_uid or _uid(uid_seed, "series", study_uid)
    frame_uid = frame_of_reference_uid or _uid(uid_seed, "frame", series_uid)
    # A fixed time under a seed keeps seeded output byte-identical across runs.
    now = datetime.datetime(2000, 1, 1) if uid_seed is not None else datetime.datetime.now()
    base = _base_dataset(
        image,
        patient_id=patient_id,
        patient_name=patient_name,
        study_uid=study_uid,
        series_uid=series_uid,
        frame_uid=frame_uid,
        series_description=series_description,
        now=now,
    )
    nk = image.size[2]
    normal = image.direction[:, 2]
    paths: list[Path] = []
    for k in range(nk):
        d = Dataset()
        d.update(base)
        position = image.world([0.0, 0.0, float(k)])
        d.SOPInstanceUID = _uid(uid_seed, "instance", series_uid, k)
        d.InstanceNumber = k + 1
        d.ImagePositionPatient = [ds(v) for v in position]
        # Distance along the slice normal; Slicer and most viewers show it as "slice location".
        d.SliceLocation = ds(float(position @ normal))
        d.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        if extra:
            for keyword, value in extra.items():
                setattr(d, keyword, value)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = d.SOPClassUID
        meta.MediaStorageSOPInstanceUID = d.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]
        file_ds = pydicom.FileDataset(None, d, file_meta=meta, preamble=b"\0" * 128)
        number = nk - k if reverse_file_order else k + 1
        path = folder / f"{file_prefix}{number:04d}.dcm"
        save_dicom_file(file_ds, path)
        paths.append(path)
    return paths


def save_dicom_file(dataset: Dataset, path: str | Path) -> Path:
    """Write ``dataset`` atomically as a DICOM Part 10 file (preamble, file meta), with pydicom 2.4 or 3.

    Slicer 5.10 bundles pydicom 2.4.4, which lacks 3.0's ``enforce_file_format``; its ``write_like_original=False``
    writes the same conformant file. The transfer syntax in the file meta decides the encoding either way.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        if int(pydicom.__version__.split(".")[0]) >= 3:
            dataset.save_as(tmp, enforce_file_format=True)
        else:
            syntax = dataset.file_meta.TransferSyntaxUID
            dataset.is_little_endian, dataset.is_implicit_VR = syntax.is_little_endian, syntax.is_implicit_VR
            dataset.save_as(tmp, write_like_original=False)
    return path
