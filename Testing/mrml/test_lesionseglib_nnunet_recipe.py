"""LesionSegTraining's nnU-Net recipes: listed beside LesionSeg's presets, launched as ``lesionseg train --engine
nnunet`` in the background, and Resume refused (in the logic, and in the child's one line) without a checkpoint."""

from __future__ import annotations

import sys
import tempfile
import time

import pytest
from support.training_data import sphere_dataset_folder

from lesionseg.jobs import JobState

slicer = pytest.importorskip("slicer")

from LesionSegLib import training  # noqa: E402


def test_nnunet_recipes_follow_lesionsegs_presets() -> None:
    recipes = training.training_recipes()
    presets = training.training_presets()
    assert recipes[: len(presets)] == presets
    assert recipes[len(presets) :] == [f"nnU-Net {c}" for c in ("3d_fullres", "3d_cascade_fullres", "2d", "3d_lowres")]
    assert training.nnunet_configuration("nnU-Net 2d") == "2d" and training.nnunet_configuration("tiny") is None


def test_resuming_an_nnunet_recipe_without_its_checkpoint_is_refused(tmp_path, monkeypatch) -> None:
    dataset = sphere_dataset_folder(tmp_path / "dataset", cases=2)
    models = tmp_path / "models"
    recipe = "nnU-Net 3d_fullres"
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))  # where the run's work folder would go
    with pytest.raises(ValueError, match="sets its own epochs and learning rate; leave both at 0"):
        training.TrainingRun(dataset, recipe, "spheres", models, sys.executable, "cpu", epochs=5)
    with pytest.raises(ValueError, match="no nnU-Net training of 'spheres' to resume"):
        training.TrainingRun(dataset, recipe, "spheres", models, sys.executable, "cpu", resume=True)
    with pytest.raises(ValueError, match="no training of 'spheres' to resume"):
        training.TrainingRun(dataset, "tiny", "spheres", models, sys.executable, "cpu", resume=True)
    assert list(temporary.iterdir()) == []  # a refused run leaves no work folder behind

    # A work folder with no checkpoint in it (a run cancelled during planning): the child refuses, where nnU-Net's
    # own --c would start a new training without a word.
    (models / training.NNUNET_WORK / "spheres").mkdir(parents=True)
    run = training.TrainingRun(dataset, recipe, "spheres", models, sys.executable, "cpu", resume=True,
                               nnunet_trainer="nnUNetTrainer_LesionSegTiny").start()  # fmt: skip
    deadline = time.monotonic() + 240
    while not run.finished and time.monotonic() < deadline:
        run.poll()
        time.sleep(0.1)
    run.poll()
    assert run.state is JobState.FAILED
    assert "no nnU-Net checkpoint" in run.failure() and "Traceback" not in run.failure()
    assert any(line.startswith("Error: UserError") for line in run.log) or "silently" in run.failure()
    with pytest.raises(ValueError, match="already trained or training"):
        training.TrainingRun(dataset, recipe, "spheres", models, sys.executable, "cpu")
