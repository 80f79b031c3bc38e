"""MONAI training on a dataset folder: configs, checkpoints, resume, the model folder, segment on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from support.cli import lesionseg, python
from support.training_data import LESION, ORGAN, one_torch_thread, sphere_case, sphere_dataset_folder  # noqa: F401

from lesionseg.datasets import Dataset
from lesionseg.errors import failure_line
from lesionseg.io import read_image, write_image
from lesionseg.jobs import Job, JobState
from lesionseg.training import load_config, presets, train
from lesionseg.training.checkpoint import BEST, LATEST

FAST = {
    "base": "tiny",
    "training": {"epochs": 2, "batch_size": 2, "amp": False, "seed": 1},
    "model": {"id": "spheres-test"},
}


def tiny_config(**sections) -> dict:
    """The tiny preset with test overrides."""
    config = load_config(FAST)
    for name, values in sections.items():
        config[name].update(values)
    return config


@pytest.fixture(scope="module")
def sphere_dataset(tmp_path_factory) -> Path:
    return sphere_dataset_folder(tmp_path_factory.mktemp("train") / "spheres", provenance={"annotator": "test"})


def test_config_errors_name_the_key_and_what_is_allowed(tmp_path: Path) -> None:
    assert {"tiny", "spleen", "lesion", "lesion-unet", "lesion-segresnet", "lesion-unetr"} <= set(presets())
    from lesionseg.training.networks import config_network

    architectures = set()
    for name in ("spleen", "lesion", "lesion-unet", "lesion-segresnet", "lesion-unetr"):
        net_name, params, module = config_network(load_config(name), out_channels=2)
        assert sum(p.numel() for p in module.parameters()) > 1_000_000, name
        if name.startswith("lesion"):
            architectures.add(net_name)
    assert architectures == {"UNet", "SegResNet", "UNETR", "DynUNet"}  # one lesion preset per architecture
    # Slice mode: a 3D network whose kernels span only the first two axes, fed one-slice patches.
    slices = load_config({"base": "tiny", "network": {"slice_mode": True}, "augmentation": {"patch_size": [32, 32, 1]}})
    from lesionseg.training.networks import config_network

    _, params, module = config_network(slices, out_channels=3)
    assert params["kernel_size"] == [3, 3, 1] and params["strides"] == [[2, 2, 1], [2, 2, 1]]
    assert tuple(module.eval()(torch.zeros(1, 1, 32, 32, 1)).shape) == (1, 3, 32, 32, 1)
    with pytest.raises(ValueError, match=r"slice_mode needs patch_size \[H, W, 1\]"):
        load_config({"base": "tiny", "network": {"slice_mode": True}})
    with pytest.raises(ValueError, match=r"config network: unknown key\(s\) \['chanels'\]; allowed: \["):
        load_config({"network": {"chanels": [8, 16]}})
    with pytest.raises(ValueError, match="config loss.name: 'Tversky' is not one of Dice, DiceCE, DiceFocal"):
        load_config({"loss": {"name": "Tversky"}})
    with pytest.raises(ValueError, match="config training.epochs: must be a number, got 'ten'"):
        load_config({"training": {"epochs": "ten"}})
    with pytest.raises(ValueError, match="multiple of 4"):
        load_config({"network": {"channels": [8, 16, 32], "strides": [2, 2]}, "augmentation": {"patch_size": [30] * 3}})
    with pytest.raises(ValueError, match="unknown config 'huge'"):
        load_config("huge")
    (tmp_path / "bad.yaml").write_text("optimizer: {name: Adam, lr: [1]}\n")
    with pytest.raises(ValueError, match="config optimizer.lr: must be a number"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "ok.json").write_text(json.dumps({"optimizer": {"name": "Novograd"}, "schedule": {"name": "poly"}}))
    assert load_config(tmp_path / "ok.json")["optimizer"]["name"] == "Novograd"
    (tmp_path / "derived.yaml").write_text("base: tiny\ntraining: {epochs: 7}\n")
    derived = load_config(tmp_path / "derived.yaml")
    assert derived["training"]["epochs"] == 7 and derived["network"]["channels"] == [8, 16, 32]
    (tmp_path / "site.yaml").write_text("base: derived.yaml\noptimizer: {lr: 0.01}\n")  # a base beside the file
    site = load_config(str(tmp_path / "site.yaml"))
    assert site["training"]["epochs"] == 7 and site["optimizer"]["lr"] == 0.01


@pytest.mark.slow
def test_trained_model_folder_is_a_valid_model_that_segment_runs(tmp_path: Path, sphere_dataset: Path) -> None:
    from lesionseg.models.spec import load_spec

    output = tmp_path / "model"
    events = []
    result = train(sphere_dataset, tiny_config(), output, progress=events.append)
    assert result.last_epoch == 2 and [e["epoch"] for e in events] == [1, 2]

    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    assert set(lines[0]["dice"]) == {"organ", "lesion"}
    assert all(k in lines[0] for k in ("loss", "lr", "time_s", "dice_mean")) and lines[0]["iterations"] > 0
    assert (output / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in (LATEST, BEST):
        state = torch.load(output / name, weights_only=True)
        assert state["epoch"] in (1, 2) and "model" in state and "optimizer" in state

    spec = load_spec(output / "spec.json")
    assert spec.network_name == "UNet" and [label.name for label in spec.labels] == ["organ", "lesion"]
    record = json.loads((output / "training.json").read_text())
    assert record["dataset"]["manifest_sha256"] == Dataset(sphere_dataset).manifest_sha256()
    assert len(record["dataset"]["train_cases"]) == 3 and len(record["dataset"]["validation_cases"]) == 1
    card = (output / "model-card.md").read_text()
    assert record["dataset"]["manifest_sha256"] in card and "Training cases (3)" in card

    # The model folder runs through the real command line.
    image, _ = sphere_case(9, size=32)
    write_image(image, tmp_path / "ct.nii.gz")
    done = lesionseg("segment", "--model", str(output), "--input", str(tmp_path / "ct.nii.gz"),
                     "--output", str(tmp_path / "seg.nii.gz"), "--device", "cpu", timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    seg = read_image(tmp_path / "seg.nii.gz")
    assert seg.same_grid(image) and set(np.unique(seg.array)) <= {0, ORGAN, LESION}

    # Starting fresh into a folder with a checkpoint, or resuming where there is none, is refused.
    with pytest.raises(ValueError, match="already holds a training checkpoint; add --resume"):
        train(sphere_dataset, tiny_config(), output)
    with pytest.raises(ValueError, match="--resume: .* holds no checkpoint_latest.pt"):
        train(sphere_dataset, tiny_config(), tmp_path / "empty", resume=True)
    with pytest.raises(ValueError, match="already finished epoch 2 of 2; give --epochs above 2"):
        train(sphere_dataset, None, output, resume=True)


@pytest.mark.slow
def test_resumed_run_matches_an_uninterrupted_one(tmp_path: Path, sphere_dataset: Path) -> None:
    config = tiny_config(augmentation={"rotate_prob": 0.5, "intensity_shift_prob": 0.5, "patch_size": [32, 32, 32]})
    config["validation"]["interval"] = 2
    train(sphere_dataset, config, tmp_path / "straight", epochs=2)
    train(sphere_dataset, config, tmp_path / "split", epochs=1)
    resumed = train(sphere_dataset, None, tmp_path / "split", epochs=2, resume=True)
    assert resumed.epochs_run == 1 and resumed.last_epoch == 2
    straight = torch.load(tmp_path / "straight" / LATEST, weights_only=True)
    split = torch.load(tmp_path / "split" / LATEST, weights_only=True)
    for key, value in straight["model"].items():
        torch.testing.assert_close(split["model"][key], value, rtol=0, atol=0)
    assert straight["history"][-1] == split["history"][-1] or (
        json.loads(straight["history"][-1])["loss"] == json.loads(split["history"][-1])["loss"]
    )


@pytest.mark.slow
def test_killed_training_resumes_without_losing_or_repeating_epochs(tmp_path: Path, sphere_dataset: Path) -> None:
    import signal
    import time

    (tmp_path / "config.json").write_text(json.dumps({**FAST, "training": {**FAST["training"], "epochs": 40}}))
    output = tmp_path / "run"
    command = [sys.executable, "-m", "lesionseg", "train", "--dataset", str(sphere_dataset), "--output", str(output),
               "--threads", "1", "--device", "cpu", "--progress", "jsonl"]  # fmt: skip
    job = Job([*command, "--config", str(tmp_path / "config.json")]).start()  # as the training panel runs it
    metrics = output / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.is_file() and metrics.read_text().strip()) and not job.state.finished:
        assert time.monotonic() < deadline, "no epoch finished in time"
        time.sleep(0.05)
    os.kill(job.pid, signal.SIGKILL)  # as the out-of-memory killer does
    assert job.wait(30) is JobState.FAILED
    # the panel's one line names the kill, not the last thing the run wrote on stderr (libraries' warnings here)
    assert job.stderr_text.strip()
    assert failure_line(job.error_text, job.stderr_text) == (
        "the process ended unexpectedly (exit status -9: it was killed, most often because the computer ran out of "
        "memory)"
    )
    done = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    assert done and done == list(range(1, len(done) + 1)) and done[-1] < 40
    last = torch.load(output / LATEST, weights_only=True)["epoch"]
    # metrics.jsonl is written just after the checkpoint, so a kill in between leaves it one epoch behind.
    assert last in (done[-1], done[-1] + 1)

    resumed = subprocess.run([*command, "--resume", "--epochs", str(last + 2)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    events = [json.loads(line) for line in resumed.stdout.splitlines() if line.startswith("{")]
    assert [e["epoch"] for e in events if e["event"] == "progress"] == [last + 1, last + 2]
    epochs = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    assert epochs == list(range(1, last + 3))
    assert (output / "spec.json").is_file()


@pytest.mark.slow
def test_two_process_data_parallel_training_ends_with_identical_weights(tmp_path: Path, sphere_dataset: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({**FAST, "training": {**FAST["training"], "epochs": 1}}))
    done = python("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lesionseg", "train",
                  "--dataset", str(sphere_dataset), "--config", str(tmp_path / "config.json"),
                  "--output", str(tmp_path / "ddp"), "--device", "cpu", "--threads", "1", timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((tmp_path / "ddp" / "training.json").read_text())["run"]
    assert run["world_size"] == 2
    first, second = run["rank_weight_sha256"]
    assert first == second


@pytest.mark.slow
def test_cascade_trains_two_stages_and_segments_through_both(tmp_path: Path, sphere_dataset: Path) -> None:
    from lesionseg.inference import segment_image
    from lesionseg.models.spec import load_spec

    config = {**FAST, "training": {**FAST["training"], "epochs": 1}, "preprocessing": {"spacing": [2.0, 2.0, 2.0]},
              "cascade": {"coarse_factor": 2.0, "margin_mm": 8.0}}  # fmt: skip
    (tmp_path / "cascade.json").write_text(json.dumps(config))
    command = [sys.executable, "-m", "lesionseg", "train", "--cascade", "--dataset", str(sphere_dataset),
               "--config", str(tmp_path / "cascade.json"), "--output", str(tmp_path / "cascade"),
               "--device", "cpu", "--progress", "jsonl"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [e["stage"] for e in events if e["event"] == "progress"] == ["train-stage1", "train-stage2"]
    assert events[-1]["event"] == "result" and events[-1]["output"] == str(tmp_path / "cascade")
    coarse, fine = (load_spec(tmp_path / "cascade" / n / "spec.json") for n in ("stage1", "stage2"))
    assert coarse.preprocessing.spacing == (4.0, 4.0, 4.0) and fine.preprocessing.spacing == (2.0, 2.0, 2.0)
    assert (coarse.id, fine.id) == ("spheres-test-stage1", "spheres-test-stage2")
    # The pair is one model: stage 2's spec with the cascade option naming stage 1.
    spec = load_spec(tmp_path / "cascade" / "spec.json")
    assert spec.id == "spheres-test" and spec.weights_path == tmp_path / "cascade" / "stage2" / "model.pt"
    assert spec.cascade.coarse_model == "stage1" and spec.cascade.margin_mm == 8.0
    assert spec.lesion_labels == (LESION,)  # from the dataset's lesion_labels
    image, _ = sphere_case(9, size=32)
    events: list[dict] = []
    labelmap, labels = segment_image(image, tmp_path / "cascade", device="cpu", progress=events.append)
    texts = " ".join(e.get("text", "") for e in events)
    assert "refining a region" in texts or "found nothing" in texts
    assert labelmap.same_grid(image) and set(np.unique(labelmap.array)) <= {0, ORGAN, LESION}
    assert [label.name for label in labels] == ["organ", "lesion"]
    again = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "nothing to resume" in again.stdout, again.stderr[-2000:]
