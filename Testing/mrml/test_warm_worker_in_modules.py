"""The modules segment through one warm worker per session, on a real slicer-core scene and real processes:
the next patient reuses the loaded model, cancel and crashes get a fresh worker, another model frees the
old one, and cleanup (or the end of the application) leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from support.processes import alive
from support.slicer_modules import REPO
from support.tiny_models import bright_ct

from lesionseg.jobs import EventKind, JobState
from lesionseg.mrml import ensure_segmentation_converters, labelmap_from_segmentation_node, volume_node_from_image

slicer = pytest.importorskip("slicer")
pytest.importorskip("torch")

from LesionSegLib import segmenting  # noqa: E402
from LesionSegLib.selftest import write_threshold_model  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.name == "nt", reason="process checks below read /proc"),
]


def group_members(pgid: int) -> list[int]:
    """Live processes of the process group ``pgid`` (the worker and anything it started)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry))
    return members


def gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid) and not group_members(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("warm-models")
    write_threshold_model(root, "organ-a", "spleen")
    write_threshold_model(root, "organ-b", "liver", threshold_hu=300.0)
    slow = write_threshold_model(root, "organ-slow", "spleen")
    spec = json.loads((slow / "spec.json").read_text())
    # Thousands of tiny windows: slow enough to be cancelled in the middle of the window loop.
    spec["inference"].update(roi_size=[4, 4, 4], overlap=0.75, sw_batch_size=1)
    (slow / "spec.json").write_text(json.dumps(spec))
    return root


@pytest.fixture
def logic(models, tmp_path):
    ensure_segmentation_converters()
    logic = segmenting.SegmentingLogic()
    logic.moduleName, logic.modelsDir, logic.pythonExecutable, logic.workRoot = (
        "SpleenSeg",
        models,
        sys.executable,
        tmp_path,
    )
    logic.scene = slicer.vtkMRMLScene()
    logic.volume = volume_node_from_image(logic.scene, bright_ct(), "Abdomen CT")
    yield logic
    logic.shutdownWorker()


def segment(logic, model_id: str, seconds: float = 120.0):
    """Start a run as the Segment button does and poll it as the panel's timer does; returns (run, log)."""
    run = logic.startSegmentation(logic.volume, logic.modelEntry(model_id), "cpu")
    log: list[str] = []
    deadline = time.monotonic() + seconds
    while not run.finished and time.monotonic() < deadline:
        log += run.poll().log
        time.sleep(0.05)
    log += run.poll().log
    return run, log


def test_the_next_patient_reuses_the_worker_and_its_loaded_model(logic):
    first, first_log = segment(logic, "organ-a")
    assert first.state is JobState.SUCCEEDED, (first.failure(), first_log)
    second, second_log = segment(logic, "organ-a")
    assert second.state is JobState.SUCCEEDED, (second.failure(), second_log)

    assert first.worker_pid == second.worker_pid and alive(second.worker_pid)
    assert first.model_reused is False and any(line.startswith("Model organ-a loaded in") for line in first_log)
    assert second.model_reused is True and "Model organ-a already loaded; not loaded again" in second_log
    # progress and stages still reach the panel, and the result is right
    assert second.status.percent == 100.0 and second.status.stage == "done"
    assert any(line.startswith("Stage: ") for line in second_log)
    node = logic.loadSegmentationResult(second, logic.scene)
    labels, _ = labelmap_from_segmentation_node(node, logic.volume)
    np.testing.assert_array_equal(labels.array > 0, bright_ct().array > 100)


def test_cancel_ends_the_workers_process_tree_and_the_next_segment_gets_a_fresh_worker(logic):
    run = logic.startSegmentation(logic.volume, logic.modelEntry("organ-slow"), "cpu")
    deadline = time.monotonic() + 120
    in_windows = False
    while not in_windows and time.monotonic() < deadline and not run.finished:
        status = run.poll()
        in_windows = status.stage == "inference"
        time.sleep(0.02)
    assert in_windows, (run.state, run.failure(), run.status)
    pid = run.worker_pid
    started = time.monotonic()
    run.cancel()
    run.poll()
    assert run.state is JobState.CANCELLED and run.status.stage == "cancelled"
    assert "nothing was added" in run.failure()
    assert gone(pid) and time.monotonic() - started < 8
    assert not run.work_dir.exists()

    after, log = segment(logic, "organ-a")
    assert after.state is JobState.SUCCEEDED, (after.failure(), log)
    assert after.worker_pid != pid and after.model_reused is False


def test_a_crashed_worker_is_replaced_and_its_run_fails_in_one_line(logic):
    first, _ = segment(logic, "organ-a")
    assert first.state is JobState.SUCCEEDED
    os.kill(first.worker_pid, signal.SIGKILL)  # idle crash: the next Segment must not reach the dead process
    assert gone(first.worker_pid)
    second, log = segment(logic, "organ-a")
    assert second.state is JobState.SUCCEEDED, (second.failure(), log)
    assert second.worker_pid != first.worker_pid and second.model_reused is False

    # A crash during a run: the run fails with one line, and the next run works again.
    slow = logic.startSegmentation(logic.volume, logic.modelEntry("organ-slow"), "cpu")
    deadline = time.monotonic() + 120
    while slow.poll().stage != "inference" and time.monotonic() < deadline and not slow.finished:
        time.sleep(0.02)
    os.kill(slow.worker_pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while not slow.finished and time.monotonic() < deadline:
        slow.poll()
        time.sleep(0.05)
    assert slow.state is JobState.FAILED
    message = slow.failure()
    assert message == (
        "Segmentation failed: the background worker ended unexpectedly (exit status -9: it was killed, most often "
        "because the computer ran out of memory); segment again"
    )
    third, log = segment(logic, "organ-a")
    assert third.state is JobState.SUCCEEDED, (third.failure(), log)
    assert third.worker_pid not in (first.worker_pid, second.worker_pid, slow.worker_pid)


def test_an_error_reaches_the_panel_in_one_line_and_the_worker_stays(logic, models):
    first, _ = segment(logic, "organ-a")
    entry = logic.modelEntry("organ-b")
    weights = models / "organ-b" / "model.safetensors"
    kept = weights.read_bytes()
    weights.write_bytes(kept[:-7] + b"garbage")  # altered after the list verified it
    try:
        run = logic.startSegmentation(logic.volume, entry, "cpu")
        log: list[str] = []
        while not run.finished:
            log += run.poll().log
            time.sleep(0.05)
        log += run.poll().log
    finally:
        weights.write_bytes(kept)
    assert run.state is JobState.FAILED
    message = run.failure()
    assert message.startswith("Segmentation failed: ") and "organ-b" in message and "\n" not in message
    assert [line for line in log if line.startswith("Error: ")] == [f"Error: WeightsError: {message[21:]}"]
    again, _ = segment(logic, "organ-b")
    assert again.state is JobState.SUCCEEDED and again.worker_pid == first.worker_pid == run.worker_pid


def test_choosing_another_model_frees_the_loaded_one(logic):
    first, _ = segment(logic, "organ-a")
    other, log = segment(logic, "organ-b")
    assert other.state is JobState.SUCCEEDED and other.worker_pid == first.worker_pid
    assert other.model_reused is False and any("(unloaded organ-a)" in line for line in log), log

    # Choosing in the panel frees it before any run: the next run of organ-b loads it again.
    logic.modelChosen("organ-b")  # the model it holds: kept
    kept, _ = segment(logic, "organ-b")
    assert kept.model_reused is True
    logic.modelChosen("organ-a")
    back, log = segment(logic, "organ-b")
    assert back.model_reused is False and not any("unloaded" in line for line in log), log
    assert back.worker_pid == first.worker_pid


def test_module_cleanup_leaves_no_worker_process(logic):
    run, _ = segment(logic, "organ-a")
    assert run.state is JobState.SUCCEEDED and alive(run.worker_pid)
    logic.shutdownWorker()
    assert gone(run.worker_pid)
    again, _ = segment(logic, "organ-a")  # the next Segment starts one again
    assert again.state is JobState.SUCCEEDED and again.worker_pid != run.worker_pid


def test_the_worker_ends_with_the_application_that_started_it(models, tmp_path):
    """No cleanup call: the application just exits (atexit), as Python in Slicer does at quit."""
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        import numpy as np
        from lesionseg.image import Image
        from lesionseg.mrml import ensure_segmentation_converters, volume_node_from_image
        from LesionSegLib import segmenting
        import slicer
        ensure_segmentation_converters()
        scene = slicer.vtkMRMLScene()
        volume = volume_node_from_image(scene, Image(np.full((4, 8, 8), 40, np.int16), (1.0, 1.0, 2.0)), "CT")
        logic = segmenting.SegmentingLogic()
        logic.moduleName, logic.modelsDir, logic.pythonExecutable = "SpleenSeg", {str(models)!r}, sys.executable
        logic.workRoot = {str(tmp_path)!r}
        run = logic.startSegmentation(volume, logic.modelEntry("organ-a"), "cpu")
        while not run.finished:
            run.poll()
            time.sleep(0.05)
        print(run.state.value, run.worker_pid, flush=True)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    state, pid = done.stdout.split()
    assert state == "succeeded"
    assert gone(int(pid), seconds=5)


def test_a_result_event_from_the_worker_still_carries_warnings_and_the_threshold(logic):
    run = logic.startSegmentation(logic.volume, logic.modelEntry("organ-a"), "cpu", threshold=0.4)
    seen = []
    while not run.finished:
        seen += run.request.poll()
        time.sleep(0.05)
    seen += run.request.poll()
    result = next(e for e in seen if e.kind is EventKind.RESULT)
    assert result.data["threshold"] == 0.4 and "warnings" in result.data
    assert seen[-1].kind is EventKind.FINISHED and seen[-1].data["state"] == "succeeded"


def test_the_modules_send_backend_and_precision_to_the_worker_as_segment_takes_them(logic):
    pytest.importorskip("openvino")
    results = []
    for backend in ("torch", "openvino", "openvino"):
        run = logic.startSegmentation(logic.volume, logic.modelEntry("organ-a"), "cpu", backend=backend)
        assert run.request.wait(120) is JobState.SUCCEEDED, run.request.error_text
        result = run.request.result
        results.append((result["backend"], result["precision"], result["model_reused"]))
    # another backend is another loaded model; the same one is kept
    assert results == [("torch", "fp32", False), ("openvino", "fp32", False), ("openvino", "fp32", True)]


def test_a_busy_worker_ends_when_the_application_dies_without_cleanup(models, tmp_path):
    """Slicer killed mid-run: no cleanup, no atexit; the worker must not go on segmenting for nobody (its next
    progress event finds no reader, and it ends)."""
    script = textwrap.dedent(
        f"""
        import os, sys, time
        sys.path.insert(0, {str(REPO)!r})
        import numpy as np
        from lesionseg.image import Image
        from lesionseg.mrml import ensure_segmentation_converters, volume_node_from_image
        from LesionSegLib import segmenting
        import slicer
        ensure_segmentation_converters()
        scene = slicer.vtkMRMLScene()
        values = np.random.default_rng(0).integers(-100, 300, (20, 40, 40)).astype(np.int16)  # no constant windows
        volume = volume_node_from_image(scene, Image(values, (1.0, 1.0, 1.0)), "CT")
        logic = segmenting.SegmentingLogic()
        logic.moduleName, logic.modelsDir, logic.pythonExecutable = "SpleenSeg", {str(models)!r}, sys.executable
        logic.workRoot = {str(tmp_path)!r}
        run = logic.startSegmentation(volume, logic.modelEntry("organ-slow"), "cpu")
        while run.poll().stage != "inference" and not run.finished:
            time.sleep(0.02)
        print(run.state.value, run.worker_pid, flush=True)
        os._exit(0)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    state, pid = done.stdout.split()
    assert state == "running"
    assert gone(int(pid), seconds=10)
