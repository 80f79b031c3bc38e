"""Input that cannot be right is refused before any result is made; input that looks wrong says so.

Real DICOM from the project's writer, edited with pydicom for each bad case; the command line as a real
subprocess; the shipped demo-spleen model (a CT model with a 48 x 4 mm window).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from support.dicom_series import edit_files, linear_phantom, write_phantom
from support.tiny_models import phantom_ct

from lesionseg.dicom import read_dicom_volume, scan_folder, write_ct_series
from lesionseg.image import Image
from lesionseg.io import read_image, write_image

MODEL = "demo-spleen"


def small_ct(slices: int = 16) -> Image:
    """A CT-like phantom of 48 x 48 x ``slices`` voxels of 2.5 mm: big enough for the demo model's window."""
    return phantom_ct(shape_kji=(slices, 48, 48), spacing=(2.5, 2.5, 2.5), body_radii_mm=(40.0, 35.0, 30.0))


def lesionseg(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "LESIONSEG_MODELS_DIR": str(cwd / "user-models")}
    return subprocess.run(
        [sys.executable, "-m", "lesionseg", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )


def segment(tmp_path: Path, source: Path, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    output = tmp_path / "seg.nii.gz"
    done = lesionseg(
        "segment", "--model", MODEL, "--input", str(source), "--output", str(output), "--device", "cpu", *extra,
        cwd=tmp_path,
    )  # fmt: skip
    return done, output


def error_lines(done: subprocess.CompletedProcess) -> list[str]:
    """The lines of stderr that are not the progress bar (which redraws itself with carriage returns)."""
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [line.rsplit("\r", 1)[-1].strip() for line in done.stderr.splitlines()]
    return [line for line in lines if line and not line.startswith("[")]


def assert_refused(done: subprocess.CompletedProcess, output: Path, *words: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    errors = [line for line in error_lines(done) if "error" in line]
    assert len(errors) == 1, done.stderr[-3000:]
    for word in words:
        assert word in errors[0], errors[0]
    assert not output.exists()
    return errors[0]


# --- modality ---------------------------------------------------------------------------------------------


def test_mr_series_given_to_the_ct_model_is_refused_naming_both_and_the_override(tmp_path):
    write_ct_series(small_ct(), tmp_path / "mr", extra={"Modality": "MR"}, uid_seed="mr")
    done, output = segment(tmp_path, tmp_path / "mr")
    line = assert_refused(done, output, "MR", "CT", "--allow-modality MR")
    assert MODEL in line
    # The override runs it, and the result says it is not validated.
    done, output = segment(tmp_path, tmp_path / "mr", "--allow-modality", "MR", "--progress", "jsonl")
    assert done.returncode == 0, done.stderr[-3000:]
    result = [json.loads(line) for line in done.stdout.splitlines() if '"result"' in line][-1]
    assert any("--allow-modality MR" in text for text in result["warnings"])
    assert output.is_file()


def test_ct_series_passes_the_modality_check_without_warnings(tmp_path):
    write_ct_series(small_ct(), tmp_path / "ct", uid_seed="ct")
    done, output = segment(tmp_path, tmp_path / "ct", "--progress", "jsonl")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["event"] == "result" and result["warnings"] == []
    assert output.is_file()


def test_8bit_nifti_given_to_the_ct_model_warns_in_the_result_and_on_the_command_line(tmp_path):
    ct = small_ct()
    eight_bit = ct.with_array(np.clip((ct.array + 1000) / 1300 * 255, 0, 255).astype(np.uint8))
    write_image(eight_bit, tmp_path / "photo.nii.gz")
    done, output = segment(tmp_path, tmp_path / "photo.nii.gz", "--progress", "jsonl")
    assert done.returncode == 0, done.stderr[-3000:]
    events = [json.loads(line) for line in done.stdout.splitlines()]
    warned = [e["text"] for e in events if e["event"] == "warning"]
    result = events[-1]
    assert result["event"] == "result" and result["warnings"] == warned
    assert len(warned) == 1 and "Hounsfield" in warned[0] and "values 0 to 25" in warned[0] and "uint8" in warned[0]
    # Without --progress the same warning reaches the terminal.
    output.unlink()
    done, output = segment(tmp_path, tmp_path / "photo.nii.gz")
    assert done.returncode == 0 and any("warning" in line and "Hounsfield" in line for line in error_lines(done))


def test_ct_spec_modality_reaches_every_builtin_ct_model():
    from lesionseg.models import builtin_specs

    specs = {spec.id: spec for spec in builtin_specs()}
    for model_id in ("spleen_ct_segmentation", "demo-spleen", "demo-lesion"):
        assert specs[model_id].modality == "CT"
        assert specs[model_id].expected_modality(0) == "CT"


def test_spec_with_a_lowercase_or_empty_modality_is_refused_by_the_schema():
    from support.tiny_models import threshold_spec_dict

    from lesionseg.models.spec import spec_from_dict

    for bad in ("ct", "", "C T"):
        with pytest.raises(ValueError, match="modality"):
            spec_from_dict({**threshold_spec_dict(), "modality": bad})
    assert spec_from_dict({**threshold_spec_dict(), "modality": "MR"}).expected_modality(0) == "MR"
    assert spec_from_dict(threshold_spec_dict()).expected_modality(0) is None  # not stated: any input


# --- degenerate extents -------------------------------------------------------------------------------------


def test_single_dicom_slice_is_refused_saying_what_was_expected(tmp_path):
    write_ct_series(small_ct(slices=1), tmp_path / "one", uid_seed="one")
    done, output = segment(tmp_path, tmp_path / "one")
    assert_refused(done, output, "single", "3D", "at least 2 voxels")


@pytest.mark.parametrize(
    "shape_kji, spacing, words",
    [
        ((1, 48, 48), (2.5, 2.5, 2.5), ["single", "k (slices)"]),  # a 2D image
        ((16, 48, 48), (2.5, 2.5, 1e-6), ["k (slices)", "192 mm", "24 mm"]),  # a spacing that squeezes it flat
        ((4, 48, 48), (2.5, 2.5, 2.5), ["10 mm", "k (slices)", "24 mm"]),  # a slab of a few slices
        ((16, 48, 2), (2.5, 2.5, 2.5), ["5 mm", "i (columns)"]),  # a strip
    ],
)
def test_degenerate_volume_is_refused_before_inference(tmp_path, shape_kji, spacing, words):
    from lesionseg.inference.pipeline import segment_file

    image = Image(np.full(shape_kji, -1000, np.int16), spacing)
    write_image(image, tmp_path / "in.nii.gz")
    events: list[dict] = []
    with pytest.raises(ValueError) as refused:
        segment_file(MODEL, tmp_path / "in.nii.gz", tmp_path / "seg.nii.gz", "cpu", events.append)
    for word in words:
        assert word in str(refused.value)
    assert not (tmp_path / "seg.nii.gz").exists()
    assert "inference" not in [e.get("stage") for e in events if e["event"] == "stage"]


def test_squeezed_slice_spacing_is_refused_on_the_command_line(tmp_path):
    image = small_ct()
    write_image(Image(image.array, (2.5, 2.5, 1e-6)), tmp_path / "flat.nii.gz")
    done, output = segment(tmp_path, tmp_path / "flat.nii.gz")
    assert_refused(done, output, "k (slices)", "voxel spacing")


def test_volume_smaller_than_one_window_is_still_segmented(tmp_path):
    """10 slices of 2.5 mm span 25 mm of a 192 mm window: padded by the sliding window, as it should be."""
    from lesionseg.inference.validity import check_extent
    from lesionseg.models import builtin_specs

    spec = next(s for s in builtin_specs() if s.id == MODEL)
    check_extent(Image(np.zeros((10, 48, 48), np.int16), (2.5, 2.5, 2.5)), spec)


# --- PixelSpacing 0\0 ---------------------------------------------------------------------------------------


def zero_pixel_spacing(folder: Path) -> None:
    def change(_, dataset):
        dataset.PixelSpacing = ["0", "0"]

    edit_files(sorted(folder.glob("*.dcm")), change)


def test_zero_pixel_spacing_is_refused_for_segmentation(tmp_path):
    write_ct_series(small_ct(), tmp_path / "ct", uid_seed="ps")
    zero_pixel_spacing(tmp_path / "ct")
    done, output = segment(tmp_path, tmp_path / "ct")
    assert_refused(done, output, "PixelSpacing is 0\\0", "wrong scale", "dicom convert")
    with pytest.raises(ValueError, match="PixelSpacing is 0"):
        read_dicom_volume(tmp_path / "ct")


def test_zero_pixel_spacing_is_converted_with_1mm_assumed_loudly(tmp_path):
    write_ct_series(small_ct(), tmp_path / "ct", uid_seed="ps")
    zero_pixel_spacing(tmp_path / "ct")
    done = lesionseg("dicom", "convert", str(tmp_path / "ct"), "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "PixelSpacing is 0\\0 (not a pixel size): 1 mm pixels ASSUMED" in done.stdout
    [written] = list((tmp_path / "out").rglob("*.nii.gz"))
    assert np.allclose(read_image(written).spacing[:2], 1.0)
    sidecar = json.loads(written.with_name(written.name.replace(".nii.gz", ".json")).read_text())
    assert any("ASSUMED" in w for w in sidecar["warnings"])


# --- frames of reference ------------------------------------------------------------------------------------


def test_two_frames_of_reference_in_one_series_are_split_not_stacked(tmp_path):
    paths = write_phantom(tmp_path / "ct", linear_phantom(shape_kji=(8, 10, 12)), uid_seed="for")
    other = pydicom.uid.generate_uid()

    def change(index, dataset):
        if index >= 4:
            dataset.FrameOfReferenceUID = other

    edit_files(paths, change)
    scan = scan_folder(tmp_path / "ct")
    assert len(scan.volumes()) == 2
    assert all(len(s.slices) == 4 for s in scan.volumes())
    assert any("2 FrameOfReferenceUIDs" in w for w in scan.volumes()[0].warnings)
    with pytest.raises(ValueError, match="2 image series"):
        read_dicom_volume(tmp_path / "ct")


# --- labelmap from another grid onto an RTSTRUCT reference --------------------------------------------------


def reference_and_label(tmp_path: Path, shift_mm: float) -> tuple[Path, Image]:
    ct = linear_phantom(shape_kji=(10, 20, 20), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0))
    write_ct_series(ct, tmp_path / "ref", uid_seed="ref")
    # A label map on a finer grid, shifted along x: a 10 mm cube that straddles the reference's edge when shifted.
    labels = np.zeros((20, 40, 40), np.uint8)
    labels[5:15, 10:30, 10:30] = 1
    return tmp_path / "ref", Image(labels, (0.5, 0.5, 1.0), (5.0 + shift_mm, 0.0, 0.0))


def test_labelmap_partly_outside_the_reference_is_refused_naming_the_fraction(tmp_path):
    from lesionseg.rtstruct.segments import export_input

    reference, label = reference_and_label(tmp_path, shift_mm=12.2)
    notes: list[str] = []
    with pytest.raises(ValueError) as refused:
        export_input(reference, label, None, None, notes.append)
    # The cube covers x = 10.2 .. 20.2 mm (centres); the reference's voxels reach x = 19.5 mm.
    inside = np.count_nonzero(np.arange(10, 30) * 0.5 + 5.0 + 12.2 <= 19.5 + 1e-3) / 20
    assert f"only {100 * inside:.1f}%" in str(refused.value)
    assert "another image" in str(refused.value)


def test_labelmap_on_another_grid_wholly_inside_the_reference_is_resampled_with_a_note(tmp_path):
    from lesionseg.rtstruct.segments import export_input

    reference, label = reference_and_label(tmp_path, shift_mm=0.0)
    notes: list[str] = []
    exported = export_input(reference, label, None, None, notes.append)
    assert any("resampled" in n for n in notes)
    assert exported.voxels.sum() > 0


# --- dicom convert writes nothing on failure ----------------------------------------------------------------


def test_convert_with_a_truncated_slice_writes_nothing(tmp_path):
    paths = write_phantom(tmp_path / "in", uid_seed="cut")
    paths[2].write_bytes(paths[2].read_bytes()[:-500])
    done = lesionseg("dicom", "convert", str(tmp_path / "in"), "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    errors = [line for line in error_lines(done) if line]
    assert len(errors) == 1 and str(paths[2]) in errors[0] and "Nothing was written" in errors[0]
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


# --- special files in a DICOM folder ------------------------------------------------------------------------


def test_named_pipe_and_link_to_dev_zero_in_a_dicom_folder_do_not_hang_scan_or_segment(tmp_path):
    folder = tmp_path / "ct"
    first = write_ct_series(small_ct(), folder, uid_seed="fifo")[0]
    os.mkfifo(folder / "pipe.dcm")
    (folder / "zero.dcm").symlink_to("/dev/zero")
    (folder / "link.dcm").symlink_to(first)  # a link to a regular file is read as usual
    done = lesionseg("dicom", "scan", str(folder), "--json", cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    kinds = {Path(item["file"]).name: item["kind"] for item in payload["not_regular_files"]}
    assert kinds == {"pipe.dcm": "a named pipe", "zero.dcm": "a character device (through a link)"}
    done = lesionseg("dicom", "scan", str(folder), cwd=tmp_path, timeout=60)
    assert "skipped, not a regular file" in done.stdout and "pipe.dcm (a named pipe)" in done.stdout
    # The link duplicates CT0000's position: the series is then refused for the duplicate, not hung on.
    (folder / "link.dcm").unlink()
    done, output = segment(tmp_path, folder)
    assert done.returncode == 0, done.stderr[-3000:]
    assert output.is_file()


def test_segment_refuses_a_named_pipe_as_input_file(tmp_path):
    os.mkfifo(tmp_path / "pipe.nii.gz")
    done, output = segment(tmp_path, tmp_path / "pipe.nii.gz")
    assert_refused(done, output, "not a regular file")
