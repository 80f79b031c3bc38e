"""``lesionseg dicom scan`` and ``lesionseg dicom convert`` as a user runs them."""

from __future__ import annotations

import json

import numpy as np
import pydicom
from support.dicom_series import edit_files, linear_phantom, set_position, write_phantom
from support.geometries import assert_same_physical_image, make_image

from lesionseg.cli import main
from lesionseg.dicom import read_dicom_volume, scan_folder, write_ct_series
from lesionseg.io import read_image


def make_tree(root):
    """Two patients, one study each; patient B's series holds a localizer; plus junk files."""
    chest = linear_phantom()
    head = make_image("anisotropic")
    write_ct_series(
        chest,
        root / "disk1" / "A",
        patient_id="../PAT A/01",
        series_description="Chest / Abdomen",
        extra={"StudyDescription": "CT Thorax*", "SeriesNumber": 3},
        uid_seed="tree-a",
    )
    paths = write_ct_series(head, root / "disk2", patient_id="PATB", series_description="Head", uid_seed="tree-b")
    localizer = pydicom.dcmread(paths[0])
    localizer.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    localizer.SOPInstanceUID = pydicom.uid.generate_uid()
    set_position(localizer, head.world([0, 0, -3]))
    localizer.save_as(root / "disk2" / "LOC.dcm", enforce_file_format=True)
    (root / "disk1" / "._CT0001.dcm").write_bytes(b"\0\5\26\7" + bytes(200))
    (root / "disk1" / "README").write_text("export notes\n")
    return chest, head


def test_scan_prints_one_row_per_series_with_warnings(tmp_path, capsys):
    make_tree(tmp_path / "in")
    assert main(["dicom", "scan", str(tmp_path / "in")]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:7] == ["PATIENT", "STUDY", "SERIES", "MOD", "SLICES", "SPACING", "WARNINGS"]
    row_a = next(line for line in lines if line.startswith("../PAT A/01"))
    assert "CT Thorax*" in row_a and "3 Chest / Abdomen" in row_a and " 6 " in row_a and "0.8x0.9x2.5" in row_a
    assert row_a.rstrip().endswith("ok")
    row_b = next(line for line in lines if line.startswith("PATB"))
    assert "1 localizer image(s) left out" in row_b and "0.7x0.7x5" in row_b
    assert "2 series, 2 non-DICOM file(s) skipped, 0 unreadable" in out


def test_scan_json_lists_uids_and_skipped_files(tmp_path, capsys):
    make_tree(tmp_path / "in")
    assert main(["dicom", "scan", "--json", str(tmp_path / "in")]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [s["patient"] for s in payload["series"]] == ["../PAT A/01", "PATB"]
    assert all(s["loadable"] and set(s["uid"]) <= set("0123456789.") for s in payload["series"])
    assert sorted(p.rsplit("/", 1)[1] for p in payload["skipped"]) == ["._CT0001.dcm", "README"]


def test_convert_writes_nifti_and_sidecar_per_series_under_safe_names(tmp_path, capsys):
    chest, head = make_tree(tmp_path / "in")
    out = tmp_path / "out"
    assert main(["dicom", "convert", str(tmp_path / "in"), "--output", str(out)]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    # A seeded write dates its study 2000-01-01; path parts keep only letters, digits, '.', '_', '-'.
    assert written == [
        "PATB/20000101_LesionSeg/1_Head.json",
        "PATB/20000101_LesionSeg/1_Head.nii.gz",
        "PAT_A_01/20000101_CT_Thorax/3_Chest_Abdomen.json",
        "PAT_A_01/20000101_CT_Thorax/3_Chest_Abdomen.nii.gz",
    ]
    assert_same_physical_image(chest, read_image(out / "PAT_A_01/20000101_CT_Thorax/3_Chest_Abdomen.nii.gz"))
    head_file = out / "PATB/20000101_LesionSeg/1_Head.nii.gz"
    assert_same_physical_image(head, read_image(head_file))
    sidecar = json.loads(head_file.with_name("1_Head.json").read_text())
    assert sidecar["tags"]["PatientID"] == "PATB" and sidecar["tags"]["Modality"] == "CT"
    assert sidecar["tags"]["TransferSyntaxUID"] == "1.2.840.10008.1.2.1"
    assert sidecar["geometry"]["size_ijk"] == [9, 9, 7]
    assert sidecar["geometry"]["spacing_mm"] == [0.7, 0.7, 5.0]
    assert sidecar["excluded_files"] == [{"file": "disk2/LOC.dcm", "reason": "localizer (ImageType LOCALIZER)"}]
    assert "1 localizer image(s) left out" in sidecar["warnings"]
    assert len(sidecar["files"]) == 7
    assert not [p for p in out.rglob(".*")], "temporary files left behind"
    assert "warning: 1 localizer image(s) left out" in capsys.readouterr().out


def test_convert_names_each_part_of_a_split_series(tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.4242"
    axial = linear_phantom()
    coronal = make_image("identity")
    coronal.direction = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])
    write_ct_series(axial, tmp_path / "in", series_uid=uid, file_prefix="AX", series_description="mixed")
    write_ct_series(coronal, tmp_path / "in", series_uid=uid, file_prefix="COR", series_description="mixed")
    assert main(["dicom", "convert", str(tmp_path / "in"), "-o", str(tmp_path / "out")]) == 0
    names = sorted(p.name for p in (tmp_path / "out").rglob("*.nii.gz"))
    assert names == ["1_mixed_part1.nii.gz", "1_mixed_part2.nii.gz"]
    assert main(["dicom", "convert", str(tmp_path / "in"), "-o", str(tmp_path / "one"), "--series", f"{uid}#2"]) == 0
    assert len(list((tmp_path / "one").rglob("*.nii.gz"))) == 1


def test_convert_writes_nothing_when_one_series_cannot_be_built(tmp_path, capsys):
    good = linear_phantom()
    write_phantom(tmp_path / "in" / "good", good, patient_id="GOOD")
    tilted = write_phantom(tmp_path / "in" / "tilted", patient_id="TILT")
    edit_files(tilted, lambda n, d: set_position(d, [-10.0, 20.0 + 0.9 * n, 30.0 + 2.5 * n]))
    assert main(["dicom", "convert", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--strict"]) == 2
    err = capsys.readouterr().err
    assert "1 of 2 series cannot be converted, so nothing was written" in err and "gantry tilt" in err
    assert "--series" in err
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []
    # The good series alone converts; without --strict the tilt is corrected, with a warning.
    good_uid = next(s.key for s in scan_folder(tmp_path / "in").volumes() if s.patient_id == "GOOD")
    args = ["dicom", "convert", str(tmp_path / "in"), "-o", str(tmp_path / "one"), "--strict", "--series", good_uid]
    assert main(args) == 0
    assert [p.parts[-3] for p in (tmp_path / "one").rglob("*.nii.gz")] == ["GOOD"]
    assert main(["dicom", "convert", str(tmp_path / "in"), "-o", str(tmp_path / "all")]) == 0
    assert "gantry tilt" in capsys.readouterr().out
    assert len(list((tmp_path / "all").rglob("*.nii.gz"))) == 2


def test_unreadable_file_fails_the_scan_and_the_conversion(tmp_path, capsys):
    paths = write_phantom(tmp_path / "in")
    paths[1].write_bytes(paths[1].read_bytes()[:400])
    assert main(["dicom", "scan", str(tmp_path / "in")]) == 1
    assert f"unreadable: {paths[1]}" in capsys.readouterr().out
    assert main(["dicom", "convert", str(tmp_path / "in"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(paths[1]) in err and "Nothing was written" in err
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_info_on_a_folder_with_two_series_asks_for_one(tmp_path, capsys):
    write_phantom(tmp_path / "a", patient_id="A")
    write_phantom(tmp_path / "b", patient_id="B")
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "2 image series" in err and "--series" in err
    assert read_dicom_volume(tmp_path / "a").size == (12, 10, 6)
