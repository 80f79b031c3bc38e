"""Training and inference share their torch helpers: the validation Dice is the shipped model's, and a run leaves the
process's subnormal-float setting as it found it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from support.training_data import one_torch_thread, sphere_dataset_folder  # noqa: F401

from lesionseg.datasets import Dataset
from lesionseg.inference import segment_image
from lesionseg.inference.devices import flushes_subnormals, subnormals_flushed
from lesionseg.io import read_image
from lesionseg.training import load_config, train

# A patch smaller than the 32³ cases, so validation stitches overlapping windows; spacing null and a range
# intensity keep the network grid the input's (reoriented), so a Dice there is a Dice on the input grid.
CONFIG = {
    "base": "tiny",
    "training": {"epochs": 1, "batch_size": 2, "amp": False, "seed": 3},
    "augmentation": {"patch_size": [16, 16, 16]},
    "validation": {"overlap": 0.5, "sw_batch_size": 3},
    "model": {"id": "spheres-shipped"},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """One CPU run, started with subnormals kept (torch's default), and the setting read after it."""
    root = tmp_path_factory.mktemp("shipped")
    dataset = sphere_dataset_folder(root / "spheres")
    torch.set_flush_denormal(False)
    result = train(dataset, load_config(CONFIG), root / "model", device="cpu")
    return {"dataset": dataset, "result": result, "flush_after": flushes_subnormals()}


def test_training_on_the_cpu_restores_the_subnormal_setting_it_found(trained: dict) -> None:
    # The run flushes subnormals while it trains (a 30x slower step otherwise) and hands the setting back.
    assert trained["flush_after"] is False
    with subnormals_flushed(torch.device("cpu")):
        assert flushes_subnormals()
        with subnormals_flushed(torch.device("cpu")):
            assert flushes_subnormals()
        assert flushes_subnormals(), "an inner scope must give back the outer scope's setting, not switch it off"
    assert not flushes_subnormals()
    torch.set_flush_denormal(True)
    try:
        with subnormals_flushed("cpu"):
            pass
        assert flushes_subnormals(), "a setting made outside the scope must survive it"
    finally:
        torch.set_flush_denormal(False)


def test_validation_dice_is_the_dice_of_the_shipped_model_on_the_validation_case(trained: dict) -> None:
    output = trained["result"].output
    record = json.loads((output / "training.json").read_text())
    [case] = record["dataset"]["validation_cases"]
    validated = record["best"]
    assert record["weights_from_epoch"] == validated["epoch"] == 1

    dataset = Dataset(trained["dataset"])
    image, truth = read_image(dataset.image_path(case)), read_image(dataset.label_path(case))
    labelmap, labels = segment_image(image, output, device="cpu")
    assert labelmap.same_grid(image)
    shipped = {}
    for label in labels:
        predicted, expected = labelmap.array == label.value, truth.array == label.value
        sizes = int(predicted.sum()) + int(expected.sum())
        shipped[label.name] = 1.0 if sizes == 0 else 2.0 * int((predicted & expected).sum()) / sizes
    assert set(shipped) == set(validated["dice"]) == {"organ", "lesion"}
    # Not a vacuous agreement: the network found some of the organ.
    assert shipped["organ"] > 0.0
    rounded = {name: round(value, 5) for name, value in shipped.items()}  # as metrics.jsonl keeps them
    assert rounded == validated["dice"]
    assert round(float(np.mean(list(rounded.values()))), 5) == validated["dice_mean"]


def test_training_reads_the_device_name_as_segment_does(tmp_path: Path) -> None:
    from lesionseg.inference.devices import resolve_device

    # One reader of --device: what segment refuses, train refuses in the same words, before it reads any data.
    with pytest.raises(ValueError, match=r"unknown device 'gpu'; use auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")
    with pytest.raises(ValueError, match=r"unknown device 'gpu'; use auto, cpu, cuda or cuda:N"):
        train(tmp_path / "no-dataset", load_config(CONFIG), tmp_path / "run", device="gpu")
    assert not (tmp_path / "run").exists()
    assert resolve_device("CPU", local_rank=1) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU; use --device cpu"):
            train(tmp_path / "no-dataset", load_config(CONFIG), tmp_path / "run", device="cuda")
        assert resolve_device("auto", local_rank=1) == torch.device("cpu")
    else:
        assert resolve_device("auto", local_rank=0) == resolve_device("cuda", local_rank=0) == torch.device("cuda:0")
