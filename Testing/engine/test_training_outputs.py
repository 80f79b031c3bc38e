"""What a training run leaves to watch it by: metrics.jsonl, the learning-curve PNG, TensorBoard logs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.cli import python
from support.training_data import LESION, ORGAN, one_torch_thread, sphere_case, sphere_dataset_folder  # noqa: F401

from lesionseg.training import train
from lesionseg.training.loop import CURVE, METRICS, TENSORBOARD_PIN, _write_curve, tensorboard_writer_class

REPO = Path(__file__).resolve().parents[2]
CONFIG = {
    "base": "tiny",
    "training": {"epochs": 2, "batch_size": 2, "amp": False, "seed": 3},
    "model": {"id": "outputs-test"},
}


class InterruptError(Exception):
    """Raised from the progress callback, as a cancel or a time budget does."""


@pytest.fixture(scope="module")
def sphere_dataset(tmp_path_factory) -> Path:
    return sphere_dataset_folder(tmp_path_factory.mktemp("outputs") / "spheres")


def _metrics(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / METRICS).read_text().splitlines()]


def _assert_curve_shows(output: Path, history: list[dict], scratch: Path) -> None:
    """The PNG is byte for byte the curve drawn from this history (matplotlib's Agg output is repeatable)."""
    _write_curve(scratch, history)
    assert (output / CURVE).read_bytes() == (scratch / CURVE).read_bytes()


@pytest.mark.slow
def test_tensorboard_logs_read_back_equal_metrics_jsonl(tmp_path: Path, sphere_dataset: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output = tmp_path / "run"
    config = {**CONFIG, "training": {**CONFIG["training"], "tensorboard": True}}
    train(sphere_dataset, config, output, device="cpu")
    history = _metrics(output)
    assert [h["epoch"] for h in history] == [1, 2] and all(h.get("dice_mean") is not None for h in history)

    events = EventAccumulator(str(output / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert tags == {"loss", "lr", "dice_mean", "dice/organ", "dice/lesion"}

    def logged(tag: str) -> list[tuple[int, float]]:
        return [(event.step, event.value) for event in events.Scalars(tag)]

    # TensorBoard stores float32: compare the metrics.jsonl figures at that precision, one per epoch.
    for tag, figure in (
        ("loss", lambda h: h["loss"]),
        ("lr", lambda h: h["lr"]),
        ("dice_mean", lambda h: h["dice_mean"]),
        ("dice/organ", lambda h: h["dice"]["organ"]),
        ("dice/lesion", lambda h: h["dice"]["lesion"]),
    ):
        assert logged(tag) == [(h["epoch"], float(np.float32(figure(h)))) for h in history], tag
    _assert_curve_shows(output, history, tmp_path / "redrawn")


@pytest.mark.slow
def test_interrupted_run_still_leaves_a_curve_of_its_last_epoch(tmp_path: Path, sphere_dataset: Path) -> None:
    output = tmp_path / "run"
    config = {**CONFIG, "training": {**CONFIG["training"], "epochs": 3}, "validation": {"interval": 10}}
    curve_after: dict[int, bool] = {}

    def stop_at_two(event: dict) -> None:
        curve_after[event["epoch"]] = (output / CURVE).is_file()
        if event["epoch"] == 2:
            raise InterruptError

    with pytest.raises(InterruptError):
        train(sphere_dataset, config, output, device="cpu", progress=stop_at_two)
    # Neither epoch validated and both took well under 30 s, so no epoch drew the PNG itself...
    assert curve_after == {1: False, 2: False}
    history = _metrics(output)
    assert [h["epoch"] for h in history] == [1, 2] and all(h.get("dice_mean") is None for h in history)
    # ...and the end of the run drew it with both.
    _assert_curve_shows(output, history, tmp_path / "redrawn")


def test_tensorboard_asked_for_but_not_installed_fails_before_training(tmp_path: Path, sphere_dataset: Path) -> None:
    # A real CLI process in which importing tensorboard fails, as it does where the package is absent.
    code = "import sys; sys.modules['tensorboard'] = None; from lesionseg.cli import main; sys.exit(main(sys.argv[1:]))"
    output = tmp_path / "run"
    done = python("-c", code, "train", "--dataset", str(sphere_dataset), "--output", str(output),
                  "--device", "cpu", "--tensorboard", timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"pip install {TENSORBOARD_PIN}" in done.stderr and "--tensorboard" in done.stderr
    assert not output.exists()
    with pytest.raises(ValueError, match=r"needs the tensorboard package .*pip install tensorboard=="):
        tensorboard_writer_class("lesionseg_no_such_module")
    # The version the error names is the one the test requirements install.
    assert TENSORBOARD_PIN in (REPO / "requirements" / "test.txt").read_text().splitlines()
