"""``lesionseg train --engine nnunet``: a curated dataset trained by nnU-Net v2, streamed as job events, imported and
used to segment; resume is refused where nnU-Net would silently start afresh."""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from support import cli
from support.processes import alive
from support.training_data import LESION, ORGAN, sphere_case, sphere_dataset_folder

from lesionseg.datasets import split_dataset
from lesionseg.errors import UserError
from lesionseg.jobs import EventKind, Job, JobState, protocol
from lesionseg.training.nnunet import epoch_figures, label_names, train_nnunet


@pytest.fixture(scope="module")
def spheres(tmp_path_factory) -> Path:
    """Four 32³ sphere phantoms (organ and lesion labels), split so nnU-Net's fold 0 is the dataset's own split."""
    root = sphere_dataset_folder(tmp_path_factory.mktemp("nnunet-train") / "spheres", cases=4)
    split_dataset(root, validation=0.25, test=0.0)
    return root


def test_resume_without_a_checkpoint_is_refused_before_any_work(spheres: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    run = cli.lesionseg("train", "--engine", "nnunet", "--dataset", str(spheres), "--output", str(work), "--resume",
                        "--trainer", "nnUNetTrainer_LesionSegTiny", "--models-dir", str(tmp_path / "models"),
                        "--progress", "jsonl", timeout=300)  # fmt: skip
    assert run.returncode != 0
    errors = [e for e in map(protocol.parse_line, run.stdout.splitlines()) if e.kind is EventKind.ERROR]
    assert errors and "no nnU-Net checkpoint" in errors[0].data["text"], run.stdout + run.stderr
    assert "silently start a new training" in errors[0].data["text"]
    assert not (work / "raw").exists() and not (tmp_path / "models").exists()  # refused before exporting anything


def test_folds_the_dataset_cannot_give_are_refused_before_any_work(tmp_path: Path) -> None:
    few = sphere_dataset_folder(tmp_path / "few", cases=3)  # no split: nnU-Net would split 3 cases into 5 folds
    with pytest.raises(UserError, match=r"3 case\(s\) and no split.*lesionseg dataset split.*--fold all"):
        train_nnunet(few, "3d_fullres", tmp_path / "work", tmp_path / "models", "few")
    split_dataset(few, validation=0.34, test=0.0)
    with pytest.raises(UserError, match="its own train/validation split, which is nnU-Net's fold 0"):
        train_nnunet(few, "3d_fullres", tmp_path / "work", tmp_path / "models", "few", fold="2")
    assert not (tmp_path / "work" / "raw").exists() and not (tmp_path / "models").exists()


def test_a_cascade_without_its_first_stage_is_refused_with_the_step_to_take(spheres: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="train --configuration 3d_lowres in the same --output"):
        train_nnunet(spheres, "3d_cascade_fullres", tmp_path / "work", tmp_path / "models", "cascade")
    with pytest.raises(UserError, match="nnU-Net trains 3d_fullres, 3d_cascade_fullres, 2d, 3d_lowres"):
        train_nnunet(spheres, "3d_highres", tmp_path / "work", tmp_path / "models", "cascade")
    assert not (tmp_path / "work" / "raw").exists()


def test_epoch_events_from_nnunets_training_log_parse_as_job_events() -> None:
    from nnunetv2.training.logging.nnunet_logger import MetaLogger

    log = MetaLogger(output_folder=None, resume=False)
    names = label_names({"labels": {"background": 0, "organ": 1, "lesion": 2}})
    stream = io.StringIO()
    elapsed = 0.0
    for epoch, (loss, dice) in enumerate([(-0.2, [0.5, 0.1]), (-0.4, [0.7, 0.3])]):
        # What nnUNetTrainer logs in one epoch, in its order.
        log.log("epoch_start_timestamps", 100.0 + 10 * epoch, epoch)
        log.log("lrs", 0.01, epoch)
        log.log("train_losses", np.float32(loss), epoch)
        log.log("mean_fg_dice", np.float64(np.mean(dice)), epoch)
        log.log("dice_per_class_or_region", [np.float64(d) for d in dice], epoch)
        log.log("val_losses", np.float32(loss / 2), epoch)
        log.log("epoch_end_timestamps", 107.5 + 10 * epoch, epoch)
        figures = epoch_figures(log, epoch + 1, names, iterations=2, seconds_before=elapsed)
        elapsed = figures["elapsed_s"]
        protocol.write_event(protocol.epoch_progress(epoch + 1, 2, figures), stream)
    events = [protocol.parse_line(line) for line in stream.getvalue().splitlines()]
    assert [e.kind for e in events] == [EventKind.PROGRESS, EventKind.PROGRESS]
    last = events[-1].data
    assert last["epoch"] == 2 and last["percent"] == 100.0 and last["stage"] == "train"
    assert last["loss"] == pytest.approx(-0.4) and last["val_loss"] == pytest.approx(-0.2)
    assert last["dice"] == pytest.approx({"organ": 0.7, "lesion": 0.3}) and last["dice_mean"] == pytest.approx(0.5)
    assert last["dice_ema"] == pytest.approx(0.9 * 0.3 + 0.1 * 0.5)  # nnU-Net's moving average, not ours
    assert last["elapsed_s"] == pytest.approx(15.0) and last["time_s"] == pytest.approx(7.5)
    assert set(last) - {"event"} <= set(protocol.FIELDS[EventKind.PROGRESS]), "every field is documented"


def _descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _cancel_once_nnunet_trains(argv: list[str]) -> None:
    """Start the training as the modules do, cancel it once nnU-Net trains (with its augmentation workers up)."""
    job = Job(argv).start()
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and job.running:
        texts = [e.data.get("text", "") for e in job.poll() if e.kind is EventKind.MESSAGE]
        if any(t.startswith("nnU-Net: training") for t in texts):
            break
        time.sleep(0.2)
    time.sleep(5)
    tree = _descendants(job.pid)
    assert tree, "nnU-Net's worker processes should be running"
    job.cancel()
    assert job.state is JobState.CANCELLED and not alive(job.pid)
    deadline = time.monotonic() + 30  # the group's SIGKILL; a loaded machine may take a moment
    while any(alive(pid) for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in tree if alive(pid)]


@pytest.mark.slow
def test_train_a_tiny_nnunet_model_then_segment_a_case_with_it(spheres: Path, tmp_path: Path) -> None:
    work, models = tmp_path / "work", tmp_path / "models"
    started = time.monotonic()
    # A cancelled try: its whole process tree ends and the planning it did is kept.  It trains in its own folder:
    # whether it had written a checkpoint when the cancel came depends on the machine's speed, and a folder with
    # one asks for --resume.
    cancelled = tmp_path / "work-cancelled"
    _cancel_once_nnunet_trains([sys.executable, "-m", "lesionseg", "train", "--engine", "nnunet", "--dataset",
                                str(spheres), "--trainer", "nnUNetTrainer_LesionSegTiny", "--output", str(cancelled),
                                "--models-dir", str(models), "--device", "cpu", "--threads", "1", "--progress",
                                "jsonl"])  # fmt: skip
    assert (cancelled / "preprocessed" / "Dataset501_Spheres" / "nnUNetPlans.json").is_file()
    run = cli.lesionseg("train", "--engine", "nnunet", "--dataset", str(spheres), "--configuration", "3d_fullres",
                        "--trainer", "nnUNetTrainer_LesionSegTiny", "--output", str(work), "--model-id", "spheres-nn",
                        "--models-dir", str(models), "--device", "cpu", "--threads", "1", "--progress", "jsonl",
                        timeout=1500)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    events = [protocol.parse_line(line) for line in run.stdout.splitlines()]
    epochs = [e.data for e in events if e.kind is EventKind.PROGRESS and "epoch" in e.data]
    assert [e["epoch"] for e in epochs] == [1] and epochs[0]["percent"] == 100.0
    assert set(epochs[0]["dice"]) == {"organ", "lesion"} and np.isfinite(epochs[0]["loss"])
    result = next(e.data for e in events if e.kind is EventKind.RESULT)
    model = Path(result["output"])
    assert model == models / "spheres-nn" and result["engine"] == "nnunet"
    sidecar = json.loads((model / "lesionseg-nnunet.json").read_text())
    assert sidecar["lesion_labels"] == [2] and sidecar["modality"] == {"0": "CT"}
    assert "nnUNetTrainer_LesionSegTiny__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth" in sidecar["checkpoints"]
    # nnU-Net's own run would have left no checkpoint_latest half-written: ours are moved into place.
    assert not list(work.rglob("*.pth.part"))

    # Resuming the finished training goes through nnU-Net's --c: it loads checkpoint_final and trains no epoch.
    again = cli.lesionseg("train", "--engine", "nnunet", "--dataset", str(spheres), "--resume", "--trainer",
                          "nnUNetTrainer_LesionSegTiny", "--output", str(work), "--model-id", "spheres-nn",
                          "--models-dir", str(models), "--device", "cpu", "--threads", "1", "--progress", "jsonl",
                          timeout=900)  # fmt: skip
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert not [e for e in map(protocol.parse_line, again.stdout.splitlines()) if "epoch" in e.data]

    case = spheres / "imagesTr"
    image = next(iter(sorted(case.glob("*.nii.gz"))))
    out = tmp_path / "seg.nii.gz"
    seg = cli.lesionseg("segment", "--models-dir", str(models), "--model", "spheres-nn", "--input", str(image),
                        "--output", str(out), "--device", "cpu", "--progress", "jsonl", timeout=600)  # fmt: skip
    assert seg.returncode == 0, seg.stdout[-3000:] + seg.stderr[-3000:]
    from lesionseg.io import read_image

    written, source = read_image(out), read_image(image)
    assert written.same_grid(source), "the labelmap lies on the input's grid"
    assert set(np.unique(written.array)) <= {0, 1, 2}
    print(f"nnU-Net train, resume and segment: {time.monotonic() - started:.0f} s")


def _train(spheres: Path, work: Path, models: Path, configuration: str, model_id: str, *more: str):
    run = cli.lesionseg("train", "--engine", "nnunet", "--dataset", str(spheres), "--configuration", configuration,
                        "--trainer", "nnUNetTrainer_LesionSegTiny", "--output", str(work), "--model-id", model_id,
                        "--models-dir", str(models), "--device", "cpu", "--threads", "1", "--progress", "jsonl",
                        *more, timeout=1500)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return next(e.data for e in map(protocol.parse_line, run.stdout.splitlines()) if e.kind is EventKind.RESULT)


@pytest.mark.slow
def test_2d_and_the_lowres_cascade_train_and_the_cascade_segments(tmp_path: Path) -> None:
    """Every configuration LesionSegTraining offers trains for real. nnU-Net plans 3d_lowres (and so the cascade)
    only for images large against its patch: planned for 20 MB of GPU memory, 40³ spheres get 20×20×16 patches and
    a lowres stage. The cascade's second stage trains on the first stage's predictions of every case,
    which fold 'all' gives."""
    from lesionseg.datasets import add_case, init_dataset
    from lesionseg.io import read_image

    spheres = tmp_path / "spheres"  # 40³: large enough for a lowres stage with three resolution levels
    init_dataset(spheres, {ORGAN: "organ", LESION: "lesion"}, name="Spheres", lesion_labels=[LESION])
    for seed in range(4):
        add_case(spheres, *sphere_case(seed, size=40), case_id=f"s{seed}")
    split_dataset(spheres, validation=0.25, test=0.0)
    work, models = tmp_path / "work", tmp_path / "models"
    plan = ("--plan-gpu-memory", "0.02")
    two_d = _train(spheres, work, models, "2d", "spheres-2d", *plan)
    plans = json.loads((work / "preprocessed" / "Dataset501_Spheres" / "nnUNetPlans.json").read_text())
    assert {"2d", "3d_lowres", "3d_cascade_fullres"} <= set(plans["configurations"])
    refused = cli.lesionseg("train", "--engine", "nnunet", "--dataset", str(spheres), "--configuration", "3d_lowres",
                            "--output", str(work), "--models-dir", str(models), "--plan-gpu-memory", "2",
                            timeout=300)  # fmt: skip
    assert refused.returncode == 2 and "was planned for 0.02 GB" in refused.stderr, refused.stderr
    _train(spheres, work, models, "3d_lowres", "spheres-low", "--fold", "all", *plan)
    cascade = _train(spheres, work, models, "3d_cascade_fullres", "spheres-cascade", "--fold", "all")
    assert cascade["engine"] == "nnunet" and Path(two_d["output"]) == models / "spheres-2d"

    image = next(iter(sorted((spheres / "imagesTr").glob("*.nii.gz"))))
    for model, stages in (("spheres-2d", ["2d"]), ("spheres-cascade", ["3d_lowres", "3d_cascade_fullres"])):
        out = tmp_path / f"{model}.nii.gz"
        seg = cli.lesionseg("segment", "--models-dir", str(models), "--model", model, "--input", str(image),
                            "--output", str(out), "--device", "cpu", "--progress", "jsonl", timeout=600)  # fmt: skip
        assert seg.returncode == 0, seg.stdout[-3000:] + seg.stderr[-3000:]
        result = next(e.data for e in map(protocol.parse_line, seg.stdout.splitlines()) if e.kind is EventKind.RESULT)
        assert [s["configuration"] for s in result["nnunet"]["stages"]] == stages
        assert read_image(out).same_grid(read_image(image))
