"""Synthetic CT studies: a phantom and its lesions, sampled onto a scanner-like grid, and written out.

Everything written here is **synthetic**: computed phantoms, not patient data, and not for clinical
use.  A cohort folder holds, for each case ``<case_id>/``: ``image.nii.gz`` (HU, int16),
``label.nii.gz`` (uint8, values in ``tissues.PHANTOM_LABELS``), ``labels.json``, ``truth.json``
(per-lesion ground truth in LPS mm) and, when asked, ``dicom/`` (one CT series); and at the top
``cohort.json`` and ``SYNTHETIC.txt``.

Determinism: case ``k`` of seed ``S`` draws from ``SeedSequence(S, spawn_key=(k,))``, split into
separate streams for anatomy, scan geometry, lesions and noise, so it is the same whatever the
number of cases, and a change to one stream leaves the others alone.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter1d

from lesionseg.data.lesions import Lesion, sample_lesions
from lesionseg.data.phantom import Phantom, sample_phantom
from lesionseg.data.shapes import Canvas
from lesionseg.data.tissues import NOISE_SD_HU, PHANTOM_LABELS, PSF_FWHM_MM
from lesionseg.image import Image
from lesionseg.io import write_image
from lesionseg.io.atomic import write_bytes_atomic, write_json_atomic
from lesionseg.orientation import orientation_code, reorient

log = logging.getLogger(__name__)

GENERATOR = "lesionseg.data.study"
GENERATOR_VERSION = "1.1"  # bump whenever the same seed would give different data
HU_CLIP = (-1024, 3071)


@dataclass(frozen=True)
class SizePreset:
    """How big a case's grid is: in-plane matrix, in-plane spacing window, slice spacings."""

    matrix: tuple[int, int]  # inclusive range of the in-plane matrix (square)
    pixel_mm: tuple[float, float]  # the field of view is picked so the spacing falls in here
    slice_mm: tuple[float, ...]  # slice spacings to choose from
    max_slices: int


# "small": coarse grids for tests and the demo (a whole abdomen in ~110 pixels needs 3-5 mm pixels);
# "full": a diagnostic 512 matrix.  Thin slices that would exceed max_slices are thickened to fit.
SIZE_PRESETS: dict[str, SizePreset] = {
    "small": SizePreset(matrix=(96, 128), pixel_mm=(2.8, 5.0), slice_mm=(3.0, 4.0, 5.0), max_slices=160),
    "full": SizePreset(
        matrix=(512, 512), pixel_mm=(0.6, 1.0), slice_mm=(1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0), max_slices=480
    ),
}

# Storage orientations (codes name where axes i, j, k point) and how often each is drawn: mostly
# the axial LPS order of scanners, some as NIfTI tools store (RAS, LAS), feet-first stacks (LPI),
# and one with the in-plane axes swapped (PLS), so orientation handling is always exercised.
ORIENTATIONS: dict[str, float] = {"LPS": 0.5, "RAS": 0.15, "LPI": 0.15, "LAS": 0.1, "PLS": 0.1}

SYNTHETIC_NOTICE = """\
SYNTHETIC DATA - NOT PATIENT DATA - NOT FOR CLINICAL USE

Every image in this folder was computed by the LesionSeg phantom generator
({generator} {version}) from random numbers (seed {seed}).  The "patients" are
geometric phantoms: ellipsoids, cylinders and capsules given CT-like densities
(HU), with synthetic partial-volume blur and noise.  No person was scanned and no
patient data were used.  The organs and lesions are approximations meant to test
and demonstrate software; they are not anatomy to learn medicine from and must
not be used for diagnosis, treatment or clinical validation.

Per case: image.nii.gz (CT, HU, int16), label.nii.gz (labels, uint8),
labels.json (label value -> name, colour), truth.json (per-lesion truth in LPS mm),
dicom/ (the same image as a CT series, when asked for).
"""


@dataclass(frozen=True)
class SynthOptions:
    """Choices that shape every case of a cohort."""

    size: str = "small"
    max_lesions: int = 6
    orientation: str = "mixed"  # "mixed" draws from ORIENTATIONS; or a code such as "LPS"
    phase: str | None = None  # None draws the contrast phase per case

    def __post_init__(self) -> None:
        if self.size not in SIZE_PRESETS:
            raise ValueError(f"unknown size {self.size!r}; use one of {', '.join(SIZE_PRESETS)}")
        if self.max_lesions < 0:
            raise ValueError(f"the lesion limit must be 0 or more, got {self.max_lesions}")
        if self.orientation != "mixed":
            orientation_code_check(self.orientation)


def orientation_code_check(code: str) -> None:
    """Raise ValueError unless ``code`` is a valid three-letter orientation code."""
    reorient(Image(np.zeros((1, 1, 1))), code)


@dataclass
class SyntheticCase:
    case_id: str
    index: int
    seed: int
    image: Image
    label: Image
    truth: dict[str, Any]
    lesions: list[Lesion] = field(default_factory=list)


def case_id(index: int) -> str:
    return f"case{index + 1:03d}"


def case_streams(seed: int, index: int) -> dict[str, np.random.Generator]:
    """Independent random streams of one case; the same for a case whatever the cohort size."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and case index must be 0 or more, got seed={seed}, index={index}")
    root = np.random.SeedSequence(entropy=seed, spawn_key=(index,))
    names = ("anatomy", "geometry", "lesions", "noise")
    return {name: np.random.default_rng(child) for name, child in zip(names, root.spawn(len(names)), strict=True)}


@dataclass
class ScanGeometry:
    """Where the scanner put its grid, in the phantom's local frame, and where that frame sits."""

    origin: np.ndarray  # local LPS mm of voxel (0, 0, 0) on the canonical axial grid
    spacing: np.ndarray
    shape_kji: tuple[int, int, int]
    offset: np.ndarray  # scanner coordinates = local + offset
    orientation: str
    psf_fwhm_mm: float
    noise_sd: float

    @property
    def lo(self) -> np.ndarray:
        return self.origin

    @property
    def hi(self) -> np.ndarray:
        return self.origin + self.spacing * (np.array(self.shape_kji[::-1]) - 1)


def sample_geometry(rng: np.random.Generator, phantom: Phantom, options: SynthOptions) -> ScanGeometry:
    """Field of view, spacing, coverage and storage orientation of one scan."""
    preset = SIZE_PRESETS[options.size]
    marks = phantom.landmarks
    n = int(rng.integers(preset.matrix[0], preset.matrix[1] + 1))
    # the patient lies off the centre of the field of view by up to a few centimetres
    middle_y = (marks["body_front"] + marks["body_back"]) / 2
    shift_x, shift_y = rng.uniform(-20, 20), rng.uniform(-15, 25)
    half_y = (marks["body_back"] - marks["body_front"]) / 2
    # shift no further than the largest field of view of this matrix leaves room for
    room = preset.pixel_mm[1] * n / 2.0 - 5.0
    shift_x = float(np.clip(shift_x, -max(room - marks["body_half_width"], 0), max(room - marks["body_half_width"], 0)))
    shift_y = float(np.clip(shift_y, -max(room - half_y, 0), max(room - half_y, 0)))
    centre_x, centre_y = shift_x, middle_y + shift_y
    need = 2.0 * max(marks["body_half_width"] + abs(shift_x), half_y + abs(shift_y)) + 10.0
    pixel = float(np.clip(need * rng.uniform(1.0, 1.2) / n, *preset.pixel_mm))
    pixel = max(pixel, need / n)  # never crop the body, even if that leaves the preset's window
    pixel = round(pixel, 5)  # what a DICOM decimal string keeps exactly
    # coverage: from below the ischial tuberosities to the liver dome, with some play at both ends
    z_lo = marks["z_crotch"] - rng.uniform(5, 45)
    z_hi = max(marks["z_liver_dome"], marks["spleen_top"]) + rng.uniform(-5, 30)
    thickness = float(preset.slice_mm[int(rng.integers(len(preset.slice_mm)))])
    thickness = max(thickness, round((z_hi - z_lo) / (preset.max_slices - 1) + 0.005, 2))
    nz = int(np.floor((z_hi - z_lo) / thickness)) + 1
    spacing = np.array([pixel, pixel, thickness])
    origin = np.array([centre_x - pixel * (n - 1) / 2, centre_y - pixel * (n - 1) / 2, z_lo])
    # scanner coordinates: table height and longitudinal position vary between scans
    offset = np.round([rng.uniform(-10, 10), rng.uniform(-40, 20), rng.uniform(-700, 100)], 1)
    # always drawn, so a fixed --orientation changes only how the same case is stored
    codes = list(ORIENTATIONS)
    weights = np.array([ORIENTATIONS[c] for c in codes])
    orientation = codes[int(rng.choice(len(codes), p=weights / weights.sum()))]
    if options.orientation != "mixed":
        orientation = options.orientation.upper()
    return ScanGeometry(
        origin=origin,
        spacing=spacing,
        shape_kji=(nz, n, n),
        offset=offset,
        orientation=orientation,
        psf_fwhm_mm=float(rng.uniform(*PSF_FWHM_MM)),
        noise_sd=float(rng.uniform(*NOISE_SD_HU)),
    )


def _gaussian_weights(sigma: float, truncate: float = 3.0) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def add_blur_and_noise(hu: np.ndarray, spacing: np.ndarray, psf_fwhm_mm: float, noise_sd: float, rng) -> None:
    """Blur in-plane by the scanner's point-spread function and add noise of ``noise_sd`` HU, in place.

    The noise goes in before the blur, as in a scanner, which gives it a fine grain; its strength is
    raised first by what the blur takes away, so the final standard deviation is ``noise_sd``.
    """
    sigma_mm = psf_fwhm_mm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    blurs = []
    for axis, step in ((2, spacing[0]), (1, spacing[1])):
        sigma = sigma_mm / step
        if sigma >= 0.25:  # narrower than a quarter voxel changes nothing worth the time
            blurs.append((axis, sigma))
    gain = float(np.prod([np.sqrt(np.sum(_gaussian_weights(s) ** 2)) for _, s in blurs])) if blurs else 1.0
    # draw slab by slab into the one array, to keep peak memory at one float32 volume
    for k in range(hu.shape[0]):
        hu[k] += rng.standard_normal(hu.shape[1:], dtype=np.float32) * np.float32(noise_sd / gain)
    for axis, sigma in blurs:
        gaussian_filter1d(hu, sigma, axis=axis, output=hu, mode="nearest", truncate=3.0)


@dataclass
class CasePlan:
    """Everything drawn for a case before any voxel is rendered."""

    phantom: Phantom
    geometry: ScanGeometry
    lesions: list[Lesion]
    noise_rng: np.random.Generator


def plan_case(seed: int, index: int, options: SynthOptions | None = None) -> CasePlan:
    """Draw case ``index`` of ``seed``: patient, scan and lesions (fast: nothing is rendered)."""
    options = options or SynthOptions()
    streams = case_streams(seed, index)
    phantom = sample_phantom(streams["anatomy"], options.phase)
    geometry = sample_geometry(streams["geometry"], phantom, options)
    # a lesion must span two voxels along every axis, or the label could not hold it
    min_diameter = max(3.0, 2.0 * float(geometry.spacing.max()))
    lesions = sample_lesions(
        streams["lesions"], phantom, geometry.lo, geometry.hi, options.max_lesions, min_diameter_mm=min_diameter
    )
    return CasePlan(phantom, geometry, lesions, streams["noise"])


def generate_case(seed: int, index: int, options: SynthOptions | None = None) -> SyntheticCase:
    """Make case ``index`` of the cohort with ``seed``: image, label and truth (not yet written)."""
    options = options or SynthOptions()
    plan = plan_case(seed, index, options)
    phantom, geometry, lesions = plan.phantom, plan.geometry, plan.lesions
    canvas = Canvas(geometry.origin, geometry.spacing, geometry.shape_kji)
    phantom.render(
        canvas,
        nodes=[les for les in lesions if les.kind == "node"],
        bone_lesions=[les for les in lesions if les.kind != "node"],
    )
    add_blur_and_noise(canvas.hu, geometry.spacing, geometry.psf_fwhm_mm, geometry.noise_sd, plan.noise_rng)
    hu = np.rint(np.clip(canvas.hu, *HU_CLIP)).astype(np.int16)
    origin = geometry.origin + geometry.offset
    image = Image(hu, geometry.spacing, origin, np.eye(3))
    label = Image(canvas.label, geometry.spacing, origin, np.eye(3))
    if geometry.orientation != "LPS":
        image, label = reorient(image, geometry.orientation), reorient(label, geometry.orientation)
    cid = case_id(index)
    truth = _truth(cid, seed, index, options, phantom, geometry, lesions, label)
    return SyntheticCase(cid, index, seed, image, label, truth, lesions)


def _round(values, digits: int = 3) -> list[float]:
    return [round(float(v), digits) for v in values]


def _truth(cid, seed, index, options, phantom: Phantom, geometry: ScanGeometry, lesions, label: Image) -> dict:
    voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
    counts = {info.value: int(np.count_nonzero(label.array == info.value)) for info in PHANTOM_LABELS}
    lesion_rows = []
    for lesion in lesions:
        volume = lesion.volume_mm3()
        lesion_rows.append(
            {
                "id": lesion.id,
                "kind": lesion.kind,
                "label": lesion.label,
                "label_value": next(i.value for i in PHANTOM_LABELS if i.name == lesion.label),
                "site": lesion.host,
                "centre_lps_mm": _round(lesion.centre + geometry.offset),
                "diameter_mm": round(lesion.diameter_mm, 3),
                "axes_mm": _round(2.0 * lesion.radii),
                "volume_ml": round(volume / 1000.0, 5),
                "equivalent_diameter_mm": round(float(np.cbrt(6.0 * volume / np.pi)), 3),
                "label_voxels": int(lesion.painted_voxels),
                "hu": round(lesion.hu, 1),
            }
        )
    return {
        "case_id": cid,
        "synthetic": True,
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "case_index": index,
        "size": options.size,
        "contrast_phase": phantom.phase,
        "noise_sd_hu": round(geometry.noise_sd, 2),
        "psf_fwhm_mm": round(geometry.psf_fwhm_mm, 3),
        "orientation": orientation_code(label.direction),
        "spacing_mm": _round(label.spacing, 5),
        "size_ijk": list(label.size),
        "tissue_hu": {name: round(value, 1) for name, value in phantom.hu.items()},
        "label_volumes_ml": {info.name: round(float(counts[info.value]) * voxel_ml, 4) for info in PHANTOM_LABELS},
        "lesions": lesion_rows,
    }


def labels_document() -> dict[str, Any]:
    """What ``labels.json`` holds: the label table with names, colours and terminology."""
    return {"synthetic": True, "labels": [info.to_dict() for info in PHANTOM_LABELS]}


def dicom_uids(seed: int, index: int) -> dict[str, str]:
    """Study, series and frame-of-reference UIDs of a case, the same on every run."""
    # a UUID-derived UID (DICOM PS3.5 B.2) from a name-based UUID: unique per case, stable per seed
    name = f"{GENERATOR}/{GENERATOR_VERSION}/seed={seed}/case={index}"
    return {
        kind: f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, f'{name}/{kind}').int}" for kind in ("study", "series", "frame")
    }


def write_case(case: SyntheticCase, folder: str | Path, dicom: bool = False) -> Path:
    """Write one case's files into ``folder`` (created); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_image(case.image, folder / "image.nii.gz")
    write_image(case.label, folder / "label.nii.gz")
    write_json_atomic(folder / "labels.json", labels_document())
    truth = dict(case.truth)
    if dicom:
        truth["dicom"] = _write_dicom(case, folder / "dicom")
    write_json_atomic(folder / "truth.json", truth)
    return folder


def _write_dicom(case: SyntheticCase, folder: Path) -> dict[str, Any]:
    from lesionseg.dicom import write_ct_series

    image = case.image
    # scanners write axial stacks: keep head-first or feet-first order, but not other axis orders
    if orientation_code(image.direction)[2] not in "SI":
        image = reorient(image, "LPS")
    if folder.exists():
        shutil.rmtree(folder)
    uids = dicom_uids(case.seed, case.index)
    number = case.index + 1
    paths = write_ct_series(
        image,
        folder,
        patient_id=f"SYN{case.seed % 100000:05d}-{number:03d}",
        patient_name=f"Synthetic^Case{number:03d}",
        study_uid=uids["study"],
        series_uid=uids["series"],
        frame_of_reference_uid=uids["frame"],
        series_description="Synthetic abdomen-pelvis CT phantom",
        uid_seed=f"{GENERATOR}/{case.seed}/{case.index}",
        reverse_file_order=orientation_code(image.direction)[2] == "I",
        extra={
            "StudyDescription": "SYNTHETIC PHANTOM - NOT A PATIENT",
            "PatientSex": "M",
            "StudyID": f"{number}",
        },
    )
    return {
        "files": len(paths),
        "study_instance_uid": uids["study"],
        "series_instance_uid": uids["series"],
        "frame_of_reference_uid": uids["frame"],
        "orientation": orientation_code(image.direction),
    }


def prepare_output(output: str | Path, overwrite: bool = False) -> Path:
    """Check that a cohort can be written at ``output``, or raise ValueError saying what to do."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ValueError(f"output {output} is a file, not a folder; give a folder path")
    for parent in output.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"cannot create {output}: {parent} is a file; give a path inside a folder")
            break
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ValueError(f"output folder {output} is not empty; choose a new folder or pass --overwrite")
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".lesionseg-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"cannot write to {output}: {error.strerror or error}; choose a writable folder") from error
    return output


def generate_cohort(
    output: str | Path,
    cases: int,
    seed: int,
    options: SynthOptions | None = None,
    dicom: bool = False,
    first: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Generate and write cases ``first .. first+cases-1``; returns what ``cohort.json`` holds."""
    options = options or SynthOptions()
    if cases < 1:
        raise ValueError(f"--cases must be 1 or more, got {cases}")
    if seed < 0:
        raise ValueError(f"--seed must be 0 or more, got {seed}")
    if first < 0:
        raise ValueError(f"--first must be 0 or more, got {first}")
    output = prepare_output(output, overwrite)
    write_bytes_atomic(
        output / "SYNTHETIC.txt",
        SYNTHETIC_NOTICE.format(generator=GENERATOR, version=GENERATOR_VERSION, seed=seed).encode("utf-8"),
    )
    rows = []
    for index in range(first, first + cases):
        case = generate_case(seed, index, options)
        write_case(case, output / case.case_id, dicom=dicom)
        rows.append(
            {
                "case_id": case.case_id,
                "index": index,
                "image": f"{case.case_id}/image.nii.gz",
                "label": f"{case.case_id}/label.nii.gz",
                "truth": f"{case.case_id}/truth.json",
                "dicom": f"{case.case_id}/dicom" if dicom else None,
                "lesions": len(case.lesions),
                "orientation": case.truth["orientation"],
                "spacing_mm": case.truth["spacing_mm"],
            }
        )
        log.info(
            "%s: %d lesions, %s, spacing %s mm",
            case.case_id,
            len(case.lesions),
            rows[-1]["orientation"],
            rows[-1]["spacing_mm"],
        )
    cohort = {
        "synthetic": True,
        "notice": "Synthetic phantoms, not patient data; not for clinical use. See SYNTHETIC.txt.",
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "options": {
            "size": options.size,
            "max_lesions": options.max_lesions,
            "orientation": options.orientation,
            "phase": options.phase or "mixed",
            "dicom": dicom,
        },
        "labels": labels_document()["labels"],
        "cases": rows,
    }
    write_json_atomic(output / "cohort.json", cohort)
    return cohort
