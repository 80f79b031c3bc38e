"""Segment's first-use install brings nnunetv2 along only for an nnU-Net model, with --no-deps and the pins of
requirements/nnunet.txt (what is missing, and what would be installed; nothing is installed here)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
from support.processes import python_without
from support.tiny_models import threshold_spec_dict

pytest.importorskip("slicer")

from lesionseg.models.spec import spec_from_dict  # noqa: E402
from LesionSegLib import nnunetmodels, segmenting, training  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ABSENT = ("nnunetv2", "dynamic_network_architectures", "acvl_utils", "batchgeneratorsv2", "blosc2", "pandas")


def _nnunet_spec():
    return dataclasses.replace(spec_from_dict(threshold_spec_dict("imported")), source={"engine": "nnunet"})


def test_the_install_pins_are_requirements_nnunet_txt_pins():
    lines = (REPO / "requirements" / "nnunet.txt").read_text(encoding="utf-8").splitlines()
    pins = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    offered = {requirement for _name, requirement in nnunetmodels.NNUNET_REQUIREMENTS}
    assert pins <= offered, f"not offered in Slicer: {pins - offered}"
    assert all(
        name not in dict(segmenting.REQUIREMENTS) for name, _ in nnunetmodels.NNUNET_REQUIREMENTS if name in ABSENT
    )


def test_the_training_install_pins_are_requirements_nnunet_training_txt_pins():
    lines = (REPO / "requirements" / "nnunet-training.txt").read_text(encoding="utf-8").splitlines()
    pins = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert pins == {requirement for _name, requirement in nnunetmodels.NNUNET_TRAINING_REQUIREMENTS}


def test_an_nnunet_recipe_in_a_slicer_without_nnunetv2_installs_its_training_packages_and_presets_nothing():
    script = (
        "from LesionSegLib import training\n"
        "print(training.missing_recipe_requirements('tiny'))\n"
        "print(training.missing_recipe_requirements('nnU-Net 3d_fullres'))\n"
    )
    absent = (*ABSENT, "seaborn", "sklearn", "cc3d")
    printed = python_without(absent, script).splitlines()
    assert printed[0] == "[]"  # LesionSeg's own presets train with what Segment installs
    missing = [name for name, _ in ast.literal_eval(printed[1])]
    assert missing == [*ABSENT, "seaborn", "sklearn", "cc3d"]  # the predictor's packages, then the trainer's
    assert training.missing_recipe_requirements("nnU-Net 2d") == []  # all here: a repeat Train asks nothing


def test_an_nnunet_model_in_a_slicer_without_nnunetv2_installs_it_with_no_deps_and_own_models_install_nothing():
    script = (
        "import dataclasses\n"
        "from support.tiny_models import threshold_spec_dict\n"
        "from lesionseg.models.spec import spec_from_dict\n"
        "from LesionSegLib import segmenting\n"
        "own = spec_from_dict(threshold_spec_dict('own'))\n"
        "nnunet = dataclasses.replace(own, source={'engine': 'nnunet'})\n"
        "missing = segmenting.missing_model_requirements(nnunet)\n"
        "print(segmenting.missing_model_requirements(own))\n"
        "print(segmenting.missing_model_requirements(None))\n"
        "print(missing)\n"
        "print(segmenting.model_requirements_pip_arguments(missing))\n"
    )
    printed = python_without(ABSENT, "import sys\nsys.path.insert(0, 'Testing')\n" + script).splitlines()
    assert printed[0] == "[]" and printed[1] == "[]"  # LesionSeg's own models, or none chosen: nothing more
    missing = ast.literal_eval(printed[2])
    assert [name for name, _ in missing] == list(ABSENT)  # exactly what this child cannot import, in install order
    arguments = ast.literal_eval(printed[3])
    assert arguments[0] == "--no-deps" and "nnunetv2==2.8.1" in arguments and "pandas==3.1.1" in arguments
    assert not any(a.startswith(("torch", "timm")) for a in arguments[1:])  # never a second torch, nor torchvision
    # Here everything is importable, so a repeat Segment asks nothing.
    assert segmenting.missing_model_requirements(_nnunet_spec()) == []
