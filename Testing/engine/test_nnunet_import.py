"""``lesionseg models import``: nnU-Net result folders and export zips become models with recorded checkpoint hashes."""

from __future__ import annotations

import json
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from support import nnunet_models as nm

from lesionseg.cli import main
from lesionseg.inference.nnunet import NnunetOptions, predict_nnunet
from lesionseg.io import read_image
from lesionseg.models.hashcache import CACHE_FILE
from lesionseg.models.nnunet import NnunetModelError
from lesionseg.models.nnunet_import import SIDECAR, import_nnunet_model


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> nm.NnunetDataset:
    return nm.build_dataset(tmp_path_factory.mktemp("nnunet"), configurations=("3d_fullres", "3d_lowres",
                            "3d_cascade_fullres"))  # fmt: skip


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> tuple[Path, np.ndarray]:
    image, truth = nm.phantom(shape_zyx=(20, 36, 40), seed=7)
    return nm.write_case(tmp_path_factory.mktemp("case") / "case_0000.nii.gz", image), truth


def export_zip(dataset: nm.NnunetDataset, path: Path, extra: dict[str, bytes] | None = None) -> Path:
    """A zip laid out as nnUNetv2_export_model_to_zip writes it: paths relative to nnUNet_results."""
    with zipfile.ZipFile(path, "w") as archive:
        for file in sorted(dataset.root.rglob("*")):
            if file.is_file():
                archive.write(file, file.relative_to(dataset.root.parent).as_posix())
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return path


def test_import_an_export_zip_then_segment_by_its_id(dataset, case, tmp_path, capsys):
    models = tmp_path / "models"
    status = main(["models", "--models-dir", str(models), "import", str(export_zip(dataset, tmp_path / "m.zip")),
                   "--id", "phantom-nnunet"])  # fmt: skip
    assert status == 0
    sidecar = json.loads((models / "phantom-nnunet" / SIDECAR).read_text())
    assert sidecar["format"] == "nnunet-v2" and sidecar["orientation"] == "as stored"
    assert sidecar["modality"] == {"0": "CT"}
    assert [(label["value"], label["name"]) for label in sidecar["labels"]] == [(1, "lesion"), (2, "bone")]
    assert sidecar["lesion_labels"] == [1]  # found by name
    fullres = "nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth"
    assert len(sidecar["checkpoints"]) == 3 and len(sidecar["checkpoints"][fullres]) == 64
    output = tmp_path / "seg.nii.gz"
    capsys.readouterr()
    status = main(["segment", "--models-dir", str(models), "--model", "phantom-nnunet", "--input", str(case[0]),
                   "--output", str(output), "--device", "cpu", "--configuration", "3d_cascade_fullres",
                   "--progress", "jsonl"])  # fmt: skip
    assert status == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["nnunet"]["weights_verified"] is True
    assert [s["configuration"] for s in result["nnunet"]["stages"]] == ["3d_lowres", "3d_cascade_fullres"]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(output)))
    assert 2 * ((labels == 1) & (case[1] == 1)).sum() / ((labels == 1).sum() + (case[1] == 1).sum()) > 0.9


def listed(models: Path, capsys) -> dict:
    capsys.readouterr()
    assert main(["models", "--models-dir", str(models), "list", "--json"]) == 0
    return {row["id"]: row for row in json.loads(capsys.readouterr().out)}


def test_a_checkpoint_changed_after_import_is_refused(dataset, case, tmp_path, capsys):
    folder = import_nnunet_model(dataset.configuration("3d_fullres"), tmp_path / "models", "fullres")
    assert listed(tmp_path / "models", capsys)["fullres"]["verified"] is True
    checkpoint = folder / "nnUNetTrainer__nnUNetPlans__3d_fullres" / "fold_0" / "checkpoint_final.pth"
    image = read_image(case[0])
    _, _, info = predict_nnunet(image, folder, device="cpu")
    assert info["weights_verified"] is True
    data = bytearray(checkpoint.read_bytes())
    data[-100] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(NnunetModelError, match="fold_0/checkpoint_final.pth: refused: its SHA-256 .* recorded at"):
        predict_nnunet(image, folder, NnunetOptions(), device="cpu")
    row = listed(tmp_path / "models", capsys)["fullres"]
    assert row["verified"] is False and "refused: its SHA-256" in row["problem"] and row["origin"] == "nnunet"


def test_listing_imported_models_again_does_not_read_unchanged_checkpoints(dataset, tmp_path, capsys):
    models = tmp_path / "models"
    folder = import_nnunet_model(dataset.configuration("3d_fullres"), models, "fullres")
    checkpoint = folder / "nnUNetTrainer__nnUNetPlans__3d_fullres" / "fold_0" / "checkpoint_final.pth"
    assert listed(models, capsys)["fullres"]["verified"] is True
    remembered = json.loads((models / CACHE_FILE).read_text(encoding="utf-8"))["files"]
    assert str(checkpoint.resolve()) in remembered
    # Damage the bytes but keep size and mtime: a listing that re-read the file would now fail it; the repeat
    # listing answers from the cache (the documented limit of the cache; the run itself always hashes).
    stamp = checkpoint.stat()
    data = bytearray(checkpoint.read_bytes())
    data[-100] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    os.utime(checkpoint, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert listed(models, capsys)["fullres"]["verified"] is True
    # An ordinary change (a new mtime) is hashed again and seen.
    os.utime(checkpoint, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1_000_000_000))
    row = listed(models, capsys)["fullres"]
    assert row["verified"] is False and "refused: its SHA-256" in row["problem"]


@pytest.mark.parametrize(
    "member, why",
    [("../evil.txt", "outside the model folder"), ("/etc/evil", "outside the model folder"), ("link", "is a link")],
)
def test_unsafe_zip_is_refused_and_nothing_is_written(dataset, tmp_path, member, why):
    path = export_zip(dataset, tmp_path / "bad.zip")
    with zipfile.ZipFile(path, "a") as archive:
        info = zipfile.ZipInfo(member)
        if member == "link":
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    models = tmp_path / "models"
    with pytest.raises(NnunetModelError, match=why):
        import_nnunet_model(path, models, "bad")
    assert os.listdir(models) == []  # no partial model, no staging folder
    assert not (tmp_path / "evil.txt").exists()


def test_import_refuses_an_existing_id_and_a_label_that_is_not_there(dataset, tmp_path):
    models = tmp_path / "models"
    import_nnunet_model(dataset.root, models, "phantom")
    with pytest.raises(FileExistsError, match="--overwrite"):
        import_nnunet_model(dataset.root, models, "phantom")
    with pytest.raises(NnunetModelError, match=r"lesion label\(s\) \[5\] are not labels of this model"):
        import_nnunet_model(dataset.root, models, "other", lesion_labels=[5])
    import_nnunet_model(dataset.root, models, "phantom", lesion_labels=[1, 2], overwrite=True)
    assert json.loads((models / "phantom" / SIDECAR).read_text())["lesion_labels"] == [1, 2]
    assert sorted(os.listdir(models)) == ["phantom"]


def test_a_ras_model_gives_the_same_answer_whatever_the_storage_order(dataset, tmp_path):
    """The same phantom stored twice, the second with its x and z axes swapped (so spacing (2, 1, 1) mm): a model
    imported as RAS sees one array for both; fed as stored, nnU-Net resamples the two differently."""
    image, _ = nm.phantom(shape_zyx=(20, 36, 40), seed=11)
    first = nm.write_case(tmp_path / "a" / "case_0000.nii.gz", image)
    swapped = nm.write_case(
        tmp_path / "b" / "case_0000.nii.gz",
        image.transpose(2, 1, 0),
        spacing_xyz=nm.IMAGE_SPACING_XYZ[::-1],
        direction=(0, 0, 1, 0, 1, 0, 1, 0, 0),
    )
    models = tmp_path / "models"
    results = {}
    for orientation in ("RAS", "as stored"):
        folder = import_nnunet_model(dataset.root, models, orientation.replace(" ", "-"), orientation=orientation)
        a, _, info = predict_nnunet(read_image(first), folder, device="cpu")
        b, _, _ = predict_nnunet(read_image(swapped), folder, device="cpu")
        assert info["orientation"] == orientation
        assert b.same_grid(read_image(swapped))  # the labelmap lies on its input's grid
        results[orientation] = (a.array, b.array.transpose(2, 1, 0))
    a, b = results["RAS"]
    assert np.array_equal(a, b)
    a, b = results["as stored"]
    assert not np.array_equal(a, b)  # so the equality above is the reorientation's doing
