"""Label map -> DICOM Segmentation (BINARY) on a reference series, built with highdicom."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from lesionseg import __version__
from lesionseg.dicom.names import character_set, fit_names
from lesionseg.image import Image
from lesionseg.io.atomic import atomic_path
from lesionseg.labels import LabelInfo
from lesionseg.rtstruct.segments import export_input


def _code(entry: Mapping[str, str]):
    from highdicom.sr import CodedConcept

    return CodedConcept(
        value=str(entry.get("code") or entry["value"]),
        scheme_designator=str(entry.get("scheme") or entry["scheme_designator"]),
        meaning=str(entry["meaning"]),
    )


def segment_codes(info: LabelInfo):
    """(property category, property type) codes for a label.

    From the label's own terminology when it has one; else a SNOMED CT code whose name matches
    the label's (``spleen`` -> Spleen, as Organ); else Morphologically Abnormal Structure / Lesion
    for a lesion (:attr:`LabelInfo.is_lesion`); else the generic Tissue / Tissue.
    """
    from pydicom.sr.codedict import codes

    term = info.terminology or {}
    if isinstance(term.get("category"), Mapping) and isinstance(term.get("type"), Mapping):
        return _code(term["category"]), _code(term["type"])
    if info.is_lesion:
        return codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion
    keyword = "".join(word.capitalize() for word in re.split(r"[^A-Za-z]+", info.name) if word)
    if keyword and keyword in dir(codes.SCT):
        return codes.SCT.Organ, getattr(codes.SCT, keyword)
    return codes.SCT.Tissue, codes.SCT.Tissue


def export_dicomseg(
    reference_dir: str | Path,
    seg: str | Path | Image,
    output: str | Path,
    *,
    names: Mapping[int, str] | None = None,
    labels: list[LabelInfo] | None = None,
    algorithm: str = "AUTOMATIC",
    say: Callable[[str], None] = print,
) -> Path:
    """Write a BINARY DICOM SEG with one segment per label on the series in ``reference_dir``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    algorithm = algorithm.upper()
    if algorithm not in ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL"):
        raise ValueError(f"--algorithm {algorithm!r}: use AUTOMATIC, SEMIAUTOMATIC or MANUAL")
    job = export_input(reference_dir, seg, names, labels, say)
    reference, voxels, chosen = job.reference, job.voxels, job.labels
    # highdicom copies the source's character set unless told; a name it cannot hold needs UTF-8.
    charset = character_set([info.name for info in chosen], job.reference.first.get("SpecificCharacterSet"))
    fitted = fit_names([info.name for info in chosen], "LO", charset, what="Segment Label")
    for note in fitted.notes:
        say(f"note: {note}")

    descriptions = []
    for number, info in enumerate(chosen, start=1):
        category, kind = segment_codes(info)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=fitted.names[number - 1],
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=algorithm,
                algorithm_identification=(
                    None
                    if algorithm == "MANUAL"
                    else hd.AlgorithmIdentificationSequence(
                        name="LesionSeg", family=codes.cid7162.ArtificialIntelligence, version=__version__
                    )
                ),
                display_color=hd.color.CIELabColor.from_rgb(*(int(round(255 * c)) for c in info.color)),
            )
        )
    # Frames follow the sorted reference slices, so highdicom takes each frame's plane from its slice.
    # One integer frame stack holding segment numbers (highdicom's label-map input), not one boolean
    # stack per segment: a 117-label map on a 512 x 512 x 300 series would need 9 GB that way.
    lookup = np.zeros(int(voxels.max()) + 1, dtype=np.uint16 if len(chosen) > 255 else np.uint8)
    for number, info in enumerate(chosen, start=1):
        lookup[info.value] = number
    frames = lookup[voxels]
    source = reference.datasets(pixels=False)
    segmentation = hd.seg.Segmentation(
        source_images=source,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=902,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="LesionSeg",
        manufacturer_model_name="lesionseg dicomseg",
        software_versions=__version__,
        device_serial_number="0",
        series_description="LesionSeg segmentation",
        specific_character_set=charset,
    )
    output = Path(output)
    with atomic_path(output) as tmp:
        segmentation.save_as(tmp)
    return output
