"""Killing `lesionseg dataset add` mid-save must leave a dataset that verifies and loads."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from support.training_data import LESION, ORGAN, sphere_case

from lesionseg.datasets import Dataset, add_case, init_dataset, verify_dataset
from lesionseg.datasets.store import PAUSE_ENV
from lesionseg.io import read_image, write_image

# Between the version's two files; after the commit, before publishing; and halfway through
# swapping the current files (the datalist then points at the version folder).
STEPS = ["image-written", "manifest-committed", "datalist-points-at-version", "image-published"]


def _big_case(tmp_path: Path, seed: int) -> tuple[Path, Path]:
    """A 96³ case whose noisy image compresses poorly, so each write takes a while."""
    image, label = sphere_case(seed, size=96, spacing=1.0, organ_radius_mm=25)
    write_image(image, tmp_path / f"ct{seed}.nii.gz")
    write_image(label, tmp_path / f"seg{seed}.nii.gz")
    return tmp_path / f"ct{seed}.nii.gz", tmp_path / f"seg{seed}.nii.gz"


def _start_add(dataset: Path, image: Path, seg: Path, pause: float | None) -> subprocess.Popen:
    env = dict(os.environ)
    if pause:
        env[PAUSE_ENV] = str(pause)
    command = [sys.executable, "-m", "lesionseg", "dataset", "add", "--dataset", str(dataset), "--image", str(image),
               "--seg", str(seg), "--case-id", "big"]  # fmt: skip
    return subprocess.Popen(command, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


def _wait_for_step(child: subprocess.Popen, step: str) -> None:
    for line in child.stderr:
        if line.strip() == f"dataset-step: {step}":
            return
    raise AssertionError(f"the child ended (code {child.wait()}) before step {step}")


def _assert_valid_and_loadable(dataset: Path, labels_seen: list[np.ndarray]) -> None:
    from monai.data import load_decathlon_datalist
    from monai.transforms import LoadImaged

    report = verify_dataset(dataset)
    assert report.ok, report.problems
    entries = load_decathlon_datalist(str(dataset / "dataset.json"), True, "training")
    (big,) = [e for e in entries if e["case"] == "big"]
    loaded = LoadImaged(keys=["image", "label"], image_only=True)(big)
    assert loaded["image"].shape == loaded["label"].shape
    label = np.transpose(np.asarray(loaded["label"]), (2, 1, 0))
    # The pair read is one whole saved version: its label equals one of the labels ever saved.
    assert any(np.array_equal(label, seen) for seen in labels_seen)


@pytest.mark.slow
def test_killed_saves_leave_a_dataset_that_verifies_and_loads(tmp_path: Path) -> None:
    dataset = tmp_path / "ds"
    init_dataset(dataset, {ORGAN: "organ", LESION: "lesion"}, lesion_labels=[LESION])
    image, label = sphere_case(100, size=96, spacing=1.0, organ_radius_mm=25)
    add_case(dataset, image, label, case_id="big")
    add_case(dataset, *sphere_case(5, size=16), case_id="small")
    labels_seen = [label.array]
    for n, step in enumerate(STEPS):
        image_path, seg_path = _big_case(tmp_path, n)
        labels_seen.append(read_image(seg_path).array)
        child = _start_add(dataset, image_path, seg_path, pause=0.3)
        _wait_for_step(child, step)
        child.send_signal(signal.SIGKILL)
        child.wait()
        _assert_valid_and_loadable(dataset, labels_seen)

    rng = random.Random(7)
    for n in range(1):
        image_path, seg_path = _big_case(tmp_path, 50 + n)
        labels_seen.append(read_image(seg_path).array)
        child = _start_add(dataset, image_path, seg_path, pause=None)
        time.sleep(rng.uniform(2.5, 4.5))  # lands anywhere from start-up to the end of the save
        child.send_signal(signal.SIGKILL)
        child.wait()
        _assert_valid_and_loadable(dataset, labels_seen)

    # The next writer finishes or discards what the kills left; afterwards nothing is pending.
    assert (
        subprocess.run([sys.executable, "-m", "lesionseg", "dataset", "verify", str(dataset), "--repair"]).returncode
        == 0
    )
    report = verify_dataset(dataset)
    assert report.ok and not report.notes, report.notes
    manifest = Dataset(dataset).manifest()["cases"]["big"]
    versions = [v["version"] for v in manifest["versions"]]
    assert versions == sorted(set(versions)) and versions[0] == 1
    leftovers = [p.name for p in dataset.rglob("*.part*")]
    assert leftovers == []
