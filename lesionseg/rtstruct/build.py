"""The RT Structure Set dataset: pydicom, written so that ``dciodvfy`` finds no error."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.charset import default_encoding
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

from lesionseg import __version__
from lesionseg.dicom.names import character_set, fit_name, fit_names
from lesionseg.labels import LabelInfo
from lesionseg.rtstruct.reference import ReferenceSeries

# Explicit VR gives DS a 16-bit length; odd lengths get a pad byte, so the largest value is 65,534 bytes.
MAX_CONTOUR_BYTES = 65534
# The SOP class RT Structure Sets conventionally name for the referenced study (Detached Study Management).
STUDY_REFERENCE_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"
INTERPRETED_TYPES = (
    "EXTERNAL", "PTV", "CTV", "GTV", "AVOIDANCE", "ORGAN", "MARKER", "REGISTRATION", "ISOCENTER",
    "CONTRAST_AGENT", "CAVITY", "BRACHY_CHANNEL", "BRACHY_ACCESSORY", "BRACHY_SRC_APP", "BRACHY_CHNL_SHLD",
    "SUPPORT", "FIXATION", "DOSE_REGION", "CONTROL", "DOSE_MEASUREMENT",
)  # fmt: skip
ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL")


def format_ds(values: np.ndarray) -> str:
    """Backslash-joined DS text, every value at most 16 characters, to a micrometre at worst."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size and np.abs(values).max() >= 1e8:
        raise ValueError(f"coordinate {np.abs(values).max():.4g} mm is too large for a DICOM DS value")
    # Rounded to 1e-6, a value below 1e8 has at most 14 significant digits, so Python's shortest
    # round-trip repr is that decimal: at most 16 characters ("-99999999.999999").  Adding 0.0
    # turns -0.0 into 0.0.
    return "\\".join(map(repr, (np.round(values, 6) + 0.0).tolist()))


@dataclass
class Contour:
    slice_index: int  # position in the sorted reference series
    points: np.ndarray  # (n, 3) LPS mm
    text: str = ""  # ContourData as written

    def __post_init__(self) -> None:
        if not self.text:
            self.text = format_ds(self.points)


@dataclass
class Roi:
    label: LabelInfo
    interpreted_type: str = "ORGAN"
    algorithm: str = "AUTOMATIC"
    contours: list[Contour] = field(default_factory=list)


def _ds_element(text: str) -> pydicom.DataElement:
    # The text is already DS-conformant; skipping pydicom's per-value parsing keeps big exports fast.
    data = text.encode("ascii")
    if len(data) % 2:
        data += b" "
    return pydicom.dataelem.RawDataElement(pydicom.tag.Tag(0x3006, 0x0050), "DS", len(data), data, 0, False, True)


def build_rtstruct(
    reference: ReferenceSeries,
    rois: Sequence[Roi],
    *,
    structure_set_label: str = "LesionSeg",
    series_description: str = "LesionSeg structures",
    series_number: int = 901,
    now: datetime.datetime | None = None,
    notes: list[str] | None = None,
) -> pydicom.FileDataset:
    """An RT Structure Set on ``reference`` with one ROI per entry of ``rois``.

    ROI names become valid, distinct ROI Names (LO) and ROI Observation Labels (SH) in the character
    set the object declares; what had to change is appended to ``notes``.
    """
    now = now or datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    src = reference.first
    frame_uid = reference.frame_of_reference_uid
    d = Dataset()
    texts = [roi.label.name for roi in rois] + [structure_set_label, series_description]
    charset = character_set(texts, src.get("SpecificCharacterSet"))
    d.SpecificCharacterSet = charset
    roi_names = fit_names([roi.label.name for roi in rois], "LO", charset, what="ROI Name")
    roi_labels = fit_names([roi.label.name for roi in rois], "SH", charset, what="ROI Observation Label")
    if notes is not None:
        notes.extend(roi_names.notes + roi_labels.notes)
    d.InstanceCreationDate = date
    d.InstanceCreationTime = time
    d.SOPClassUID = RTStructureSetStorage
    d.SOPInstanceUID = generate_uid()
    # Patient and study: copied, so the structure set files under the images it outlines.
    for keyword in (
        "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
        "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription",
    ):  # fmt: skip
        setattr(d, keyword, src.get(keyword, ""))
    d.Modality = "RTSTRUCT"
    d.SeriesInstanceUID = generate_uid()
    d.SeriesNumber = series_number
    d.SeriesDate = date
    d.SeriesTime = time
    d.SeriesDescription = fit_name(series_description, "LO", charset)
    d.OperatorsName = ""
    d.Manufacturer = "LesionSeg"
    d.ManufacturerModelName = "lesionseg rtstruct"
    d.SoftwareVersions = __version__
    d.FrameOfReferenceUID = frame_uid
    d.PositionReferenceIndicator = src.get("PositionReferenceIndicator", "")
    d.StructureSetLabel = fit_name(structure_set_label, "SH", charset)
    d.StructureSetName = fit_name(structure_set_label, "LO", charset)
    d.StructureSetDate = date
    d.StructureSetTime = time
    d.InstanceNumber = 1

    def image_ref(index: int) -> Dataset:
        item = Dataset()
        item.ReferencedSOPClassUID = reference.slices[index].sop_class_uid
        item.ReferencedSOPInstanceUID = reference.slices[index].sop_instance_uid
        return item

    series_item = Dataset()
    series_item.SeriesInstanceUID = src.SeriesInstanceUID
    series_item.ContourImageSequence = DicomSequence([image_ref(n) for n in range(len(reference.slices))])
    study_item = Dataset()
    study_item.ReferencedSOPClassUID = STUDY_REFERENCE_SOP_CLASS
    study_item.ReferencedSOPInstanceUID = src.StudyInstanceUID
    study_item.RTReferencedSeriesSequence = DicomSequence([series_item])
    frame_item = Dataset()
    frame_item.FrameOfReferenceUID = frame_uid
    frame_item.RTReferencedStudySequence = DicomSequence([study_item])
    d.ReferencedFrameOfReferenceSequence = DicomSequence([frame_item])

    roi_items, contour_items, observation_items = [], [], []
    for number, roi in enumerate(rois, start=1):
        if roi.interpreted_type not in INTERPRETED_TYPES:
            raise ValueError(
                f"RTROIInterpretedType {roi.interpreted_type!r} is not one of {', '.join(INTERPRETED_TYPES)}"
            )
        if roi.algorithm not in ALGORITHM_TYPES:
            raise ValueError(f"ROIGenerationAlgorithm {roi.algorithm!r} is not one of {', '.join(ALGORITHM_TYPES)}")
        item = Dataset()
        item.ROINumber = number
        item.ReferencedFrameOfReferenceUID = frame_uid
        item.ROIName = roi_names.names[number - 1]
        item.ROIGenerationAlgorithm = roi.algorithm
        roi_items.append(item)

        contours = []
        for n, contour in enumerate(roi.contours, start=1):
            c = Dataset()
            c.ContourImageSequence = DicomSequence([image_ref(contour.slice_index)])
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(contour.points)
            c.ContourNumber = n
            c[0x30060050] = _ds_element(contour.text)
            # Declaring the item "read" in the encoding it will be written in (explicit VR little endian,
            # pydicom's default character set for an item without its own) lets pydicom copy the raw
            # ContourData as it is instead of parsing every number.  DS text is ASCII in any character set.
            c.set_original_encoding(False, True, default_encoding)
            contours.append(c)
        item = Dataset()
        item.ROIDisplayColor = [int(round(255 * c)) for c in roi.label.color]
        item.ContourSequence = DicomSequence(contours)
        item.ReferencedROINumber = number
        contour_items.append(item)

        item = Dataset()
        item.ObservationNumber = number
        item.ReferencedROINumber = number
        item.ROIObservationLabel = roi_labels.names[number - 1]  # SlicerRT shows this label
        item.RTROIInterpretedType = roi.interpreted_type
        item.ROIInterpreter = ""
        observation_items.append(item)
    d.StructureSetROISequence = DicomSequence(roi_items)
    d.ROIContourSequence = DicomSequence(contour_items)
    d.RTROIObservationsSequence = DicomSequence(observation_items)
    d.ApprovalStatus = "UNAPPROVED"

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = d.SOPClassUID
    meta.MediaStorageSOPInstanceUID = d.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    out = pydicom.FileDataset(None, d, file_meta=meta, preamble=b"\0" * 128)
    return out
