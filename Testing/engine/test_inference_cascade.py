"""Cascade models: a spec option that chains a coarse stage and a refinement on the crop around its result."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lesionseg.image import Image
from lesionseg.inference import segment_image
from lesionseg.inference.crop import region_around_labels
from lesionseg.io import read_image, write_image
from lesionseg.models import load_spec
from lesionseg.models.registry import ModelRegistry
from LesionSegLib.selftest import write_threshold_model

SPACING = (1.0, 1.0, 2.0)
MARGIN_MM = 10.0


def blobs_ct() -> tuple[Image, dict[str, np.ndarray]]:
    """Soft tissue with three spheres: a 600 HU one, a 200 HU one 2 mm from it, and a 200 HU one far away."""
    shape = (30, 80, 80)
    image = Image(np.zeros(shape, np.float32), SPACING, (-40.0, -30.0, 10.0), np.eye(3))
    k, j, i = np.indices(shape)
    xyz = np.stack([i * SPACING[0], j * SPACING[1], k * SPACING[2]], axis=-1)
    masks = {}
    for name, centre, radius, hu in (
        ("dense", (20, 20, 30), 6.0, 600.0),
        ("near", (31, 20, 30), 3.0, 200.0),  # 2 mm from the dense one: inside the margin
        ("far", (65, 62, 30), 5.0, 200.0),  # tens of mm beyond the margin
    ):
        masks[name] = np.linalg.norm(xyz - np.asarray(centre, float), axis=-1) <= radius
        image.array[masks[name]] = hu
    return image, masks


def cascade_folder(root: Path) -> Path:
    """Fine stage: > 100 HU at the input's voxels; coarse stage: > 400 HU on a 4 mm grid."""
    top = write_threshold_model(root, "casc", "lesion", threshold_hu=100.0)
    coarse = write_threshold_model(root / "tmp", "coarse", "lesion", threshold_hu=400.0)
    spec = json.loads((coarse / "spec.json").read_text())
    spec["preprocessing"]["spacing"] = [4.0, 4.0, 4.0]
    (coarse / "spec.json").write_text(json.dumps(spec))
    shutil.move(coarse, top / "stage1")
    spec = json.loads((top / "spec.json").read_text())
    spec["cascade"] = {"coarse_model": "stage1", "margin_mm": MARGIN_MM}
    spec["lesion_labels"] = [1]
    (top / "spec.json").write_text(json.dumps(spec))
    return top


def test_cascade_refines_only_around_what_the_coarse_stage_found(tmp_path: Path) -> None:
    image, masks = blobs_ct()
    folder = cascade_folder(tmp_path / "models")
    spec = load_spec(folder / "spec.json")
    assert spec.cascade is not None and spec.coarse_folder == folder / "stage1" and spec.lesion_labels == (1,)
    events: list[dict] = []
    labelmap, labels = segment_image(image, folder, device="cpu", progress=events.append)
    assert labelmap.same_grid(image) and [label.name for label in labels] == ["lesion"]
    assert any("refining a region" in e.get("text", "") for e in events)
    percents = [e["percent"] for e in events if e["event"] == "progress"]
    assert percents == sorted(percents) and percents[-1] == 95.0  # writing the file is the last 5 %

    # The box is the coarse stage's result plus the margin, clipped to the image...
    coarse_only, _ = segment_image(image, folder / "stage1", device="cpu")
    box = region_around_labels(coarse_only, MARGIN_MM)
    for axis, step in zip(range(3), SPACING[::-1], strict=True):
        extent = np.nonzero(coarse_only.array.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        margin = int(np.ceil(MARGIN_MM / step))
        assert box[axis].start == max(extent.min() - margin, 0)
        assert box[axis].stop == min(extent.max() + 1 + margin, image.array.shape[axis])
    inside = np.zeros(image.array.shape, bool)
    inside[box] = True
    assert inside[masks["dense"] | masks["near"]].all() and not inside[masks["far"]].any()
    # ...and the refinement is exact at the input's voxels: "> 100 HU" inside the box, nothing outside.
    assert np.array_equal(labelmap.array == 1, (image.array > 100.0) & inside)
    assert not labelmap.array[masks["far"]].any()


def test_cascade_with_nothing_found_is_empty(tmp_path: Path) -> None:
    image, _ = blobs_ct()
    image = image.with_array(np.minimum(image.array, 300.0))  # nothing reaches the coarse threshold
    labelmap, _ = segment_image(image, cascade_folder(tmp_path / "models"), device="cpu")
    assert not labelmap.array.any()


def test_cascade_runs_from_the_command_line_and_lists_as_one_model(tmp_path: Path) -> None:
    image, masks = blobs_ct()
    write_image(image, tmp_path / "ct.nii.gz")
    models = tmp_path / "models"
    cascade_folder(models)
    shutil.rmtree(models / "tmp")
    assert sorted(ModelRegistry(models)._user_specs(), key=lambda s: s.id)[0].id == "casc"
    assert "coarse" not in {s.id for s in ModelRegistry(models).specs().values()}  # the stage is not its own entry
    done = subprocess.run(
        [sys.executable, "-m", "lesionseg", "segment", "--model", "casc", "--models-dir", str(models),
         "--input", str(tmp_path / "ct.nii.gz"), "--output", str(tmp_path / "seg.nii.gz"), "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert np.array_equal(read_image(tmp_path / "seg.nii.gz").array == 1, masks["dense"] | masks["near"])


@pytest.mark.parametrize(
    "change, words",
    [
        ({"cascade": {"coarse_model": "../elsewhere", "margin_mm": 5}}, "cascade/coarse_model"),
        ({"cascade": {"coarse_model": "missing", "margin_mm": 5}}, "has no spec.json"),
        ({"lesion_labels": [3]}, "lesion_labels [3]"),
        ({"weights": {"format": "safetensors", "path": "../model.safetensors"}}, "weights/path"),
    ],
)
def test_bad_cascade_or_lesion_fields_are_named(tmp_path: Path, change: dict, words: str) -> None:
    folder = write_threshold_model(tmp_path, "bad", "lesion")
    spec = json.loads((folder / "spec.json").read_text())
    spec.update(change)
    (folder / "spec.json").write_text(json.dumps(spec))
    image, _ = blobs_ct()
    with pytest.raises(ValueError, match=None) as error:
        segment_image(image, folder, device="cpu")
    assert words in str(error.value)


def test_model_list_checks_both_stages_of_a_cascade(tmp_path: Path) -> None:
    models = tmp_path / "models"
    top = cascade_folder(models)
    shutil.rmtree(models / "tmp")
    entry = next(e for e in ModelRegistry(models).entries() if e.spec.id == "casc")
    assert entry.verified is True and not entry.problem
    weights = top / "stage1" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"oops")
    entry = next(e for e in ModelRegistry(models).entries() if e.spec.id == "casc")
    assert "stage1/model.safetensors: sha256" in entry.problem
    shutil.rmtree(top / "stage1")
    entry = next(e for e in ModelRegistry(models).entries() if e.spec.id == "casc")
    assert entry.verified is False and entry.problem.startswith("coarse stage:")
    image, _ = blobs_ct()
    with pytest.raises(ValueError, match="copy the whole model folder"):
        segment_image(image, "casc", device="cpu", models_dir=models)
