"""The synthetic phantoms' label values and tissue densities, written down once as data.

Label values (0 is background, everything unlabelled):

====  ==================  ====================================================
1     spleen
2     liver
3     kidney              left and right share one value
4     urinary bladder
5     prostate
6     bone                vertebrae, sacrum, pelvis, femora, lower ribs
7     bone metastasis     sclerotic or lytic; replaces bone label 6 where it lies
8     nodal metastasis    enlarged lymph node beside the aorta or iliac vessels
====  ==================  ====================================================

Densities are HU ranges; each case draws one value per tissue inside its range.  Two contrast
phases are generated: ``non_contrast`` and ``portal_venous`` (about 70 s after an iodine bolus, the
usual phase for staging prostate cancer).  Lesion and bone densities do not depend on the phase.
"""

from __future__ import annotations

from types import MappingProxyType

from lesionseg.labels import LabelInfo


def _code(code: str, meaning: str) -> dict[str, str]:
    return {"scheme": "SCT", "code": code, "meaning": meaning}


# SNOMED CT codes as DICOM and Slicer's terminologies use them
_ANATOMY = _code("123037004", "Anatomical Structure")
_ABNORMAL = _code("49755003", "Morphologically Abnormal Structure")
_METASTASIS = _code("128462008", "Metastasis")


def _organ(code: str, meaning: str) -> dict:
    return {"category": _ANATOMY, "type": _code(code, meaning)}


def _metastasis(region_code: str, region: str) -> dict:
    return {"category": _ABNORMAL, "type": _METASTASIS, "anatomic_region": _code(region_code, region)}


PHANTOM_LABELS: tuple[LabelInfo, ...] = (
    LabelInfo(1, "spleen", (0.62, 0.37, 0.72), _organ("78961009", "Spleen")),
    LabelInfo(2, "liver", (0.87, 0.51, 0.31), _organ("10200004", "Liver")),
    LabelInfo(3, "kidney", (0.73, 0.31, 0.24), _organ("64033007", "Kidney")),
    LabelInfo(4, "urinary_bladder", (0.87, 0.78, 0.35), _organ("89837001", "Urinary bladder")),
    LabelInfo(5, "prostate", (0.35, 0.62, 0.82), _organ("41216001", "Prostate")),
    LabelInfo(6, "bone", (0.95, 0.93, 0.84), _organ("272673000", "Bone")),
    LabelInfo(7, "bone_metastasis", (0.90, 0.10, 0.10), _metastasis("272673000", "Bone")),
    LabelInfo(8, "nodal_metastasis", (0.10, 0.80, 0.20), _metastasis("59441001", "Lymph node")),
)

LABEL: MappingProxyType[str, int] = MappingProxyType({info.name: info.value for info in PHANTOM_LABELS})
ORGAN_LABELS = ("spleen", "liver", "kidney", "urinary_bladder", "prostate", "bone")

PHASES = ("non_contrast", "portal_venous")

# tissue -> (low, high) HU, by phase; one table so tests and docs read the same numbers
TISSUE_HU: MappingProxyType[str, dict[str, tuple[float, float]]] = MappingProxyType(
    {
        "air": {"non_contrast": (-1000, -1000), "portal_venous": (-1000, -1000)},
        "table": {"non_contrast": (150, 350), "portal_venous": (150, 350)},
        "lung": {"non_contrast": (-880, -820), "portal_venous": (-880, -820)},
        "gas": {"non_contrast": (-950, -750), "portal_venous": (-950, -750)},
        "fat": {"non_contrast": (-115, -85), "portal_venous": (-115, -85)},
        "muscle": {"non_contrast": (40, 58), "portal_venous": (50, 65)},
        "blood": {"non_contrast": (35, 50), "portal_venous": (140, 190)},
        "bowel": {"non_contrast": (5, 40), "portal_venous": (10, 50)},
        "csf": {"non_contrast": (5, 18), "portal_venous": (5, 18)},
        "disc": {"non_contrast": (70, 100), "portal_venous": (75, 105)},
        "liver": {"non_contrast": (52, 66), "portal_venous": (95, 120)},
        "spleen": {"non_contrast": (40, 50), "portal_venous": (100, 125)},
        "kidney": {"non_contrast": (28, 40), "portal_venous": (150, 200)},
        "urine": {"non_contrast": (0, 15), "portal_venous": (0, 15)},
        "prostate": {"non_contrast": (35, 45), "portal_venous": (45, 70)},
        "cortical_bone": {"non_contrast": (800, 1200), "portal_venous": (800, 1200)},
        "marrow": {"non_contrast": (200, 300), "portal_venous": (200, 300)},
        "sclerotic": {"non_contrast": (400, 1200), "portal_venous": (400, 1200)},
        "lytic": {"non_contrast": (0, 60), "portal_venous": (0, 60)},
        "node": {"non_contrast": (30, 60), "portal_venous": (30, 60)},
    }
)

# which tissue fills each labelled organ: the median HU inside a label lies near this range
LABEL_TISSUE: MappingProxyType[str, str] = MappingProxyType(
    {
        "spleen": "spleen",
        "liver": "liver",
        "kidney": "kidney",
        "urinary_bladder": "urine",
        "prostate": "prostate",
        "nodal_metastasis": "node",
    }
)

CORTEX_MM = (1.2, 2.5)  # thickness of cortical bone over trabecular marrow
NOISE_SD_HU = (8.0, 20.0)
PSF_FWHM_MM = (0.8, 1.2)  # in-plane point-spread function of the scanner


def hu_range(tissue: str, phase: str) -> tuple[float, float]:
    """The HU range a tissue is drawn from in a contrast phase."""
    try:
        return TISSUE_HU[tissue][phase]
    except KeyError as error:
        raise ValueError(f"unknown tissue {tissue!r} or phase {phase!r}; phases are {', '.join(PHASES)}") from error
