"""The job protocol end to end, with real child processes: every event that ``segment --progress jsonl``, the warm
worker and ``train --progress jsonl`` send parses, comes back the same through JSON, carries only the fields
lesionseg.jobs.protocol documents, and moves the module's reader (SegmentationRun, TrainingRun) as it should."""

from __future__ import annotations

import json
import sys
import time

import pytest
from support.tiny_models import phantom_ct, threshold_spec_dict, threshold_state, write_model_folder
from support.training_data import sphere_dataset_folder

from lesionseg.io import write_image
from lesionseg.jobs import EventKind, Job, JobEvent, JobState, ManagedWorker, protocol
from lesionseg.mrml import volume_node_from_image

slicer = pytest.importorskip("slicer")
pytest.importorskip("torch")

from LesionSegLib import segmenting, training  # noqa: E402

pytestmark = pytest.mark.slow


def in_protocol(event: JobEvent) -> JobEvent:
    """``event``, once it has passed the protocol's checks."""
    assert event.kind is not EventKind.OUTPUT, f"a stdout line that is not an event: {event.data}"
    undocumented = set(event.data) - {"event", protocol.TAG} - set(protocol.FIELDS[event.kind])
    assert not undocumented, f"{event.kind.value} fields not in protocol.FIELDS: {sorted(undocumented)}"
    assert protocol.parse_line(json.dumps(event.data) + "\n") == event
    return event


def events_until_finished(source, timeout_s: float = 180.0) -> list[JobEvent]:
    events: list[JobEvent] = []
    deadline = time.monotonic() + timeout_s
    while not any(e.kind is EventKind.FINISHED for e in events):
        assert time.monotonic() < deadline, f"no finished event; seen {[e.kind for e in events]}"
        events += source.poll()
        time.sleep(0.05)
    return events


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol")
    spec = threshold_spec_dict("unhashed", spacing=None, roi=(48, 48, 48))
    # No recorded hash: each run warns that its weights are unverified, so the warning event is among those sent.
    model = write_model_folder(root / "models" / "unhashed", spec, threshold_state(), record_hash=False)
    ct = phantom_ct()
    return root, model, ct, write_image(ct, root / "ct.nrrd")


def test_the_segment_command_sends_only_protocol_events(inputs, tmp_path):
    assert set(protocol.FIELDS) == set(EventKind)  # every kind documented, and the table names no other
    _root, model, _ct, ct_path = inputs
    # A precision torch cannot run adds a message event: the command says it runs fp32 instead.
    extra = ["--backend", "torch", "--precision", "bf16"]
    job = Job.segment(str(model), ct_path, tmp_path / "labels.nrrd", device="cpu", extra=extra).start()
    events = [in_protocol(event) for event in events_until_finished(job)]
    kinds = {event.kind for event in events}
    assert {EventKind.STAGE, EventKind.PROGRESS, EventKind.MESSAGE, EventKind.WARNING} <= kinds
    assert [e.kind for e in events[-2:]] == [EventKind.RESULT, EventKind.FINISHED] and job.state is JobState.SUCCEEDED
    failed = Job.segment(str(model), tmp_path / "missing.nrrd", tmp_path / "none.nrrd", device="cpu").start()
    errors = [in_protocol(e) for e in events_until_finished(failed) if e.kind is EventKind.ERROR]
    assert len(errors) == 1 and errors[0].data["type"] == "FileNotFoundError"


def test_the_warm_worker_sends_only_protocol_events_and_the_segmentation_panel_reads_each(inputs, scene, tmp_path):
    root, model, ct, ct_path = inputs
    worker = Job([sys.executable, "-m", "lesionseg", "worker"], keep_stdin=True).start()
    try:
        first = worker.next_event(60.0)
        assert first is not None and in_protocol(first).kind is EventKind.READY and first.data["pid"] == worker.pid
        worker.send_line(json.dumps({"command": "shutdown"}))
        assert worker.wait(30.0) is JobState.SUCCEEDED
    finally:
        worker.cancel()

    volume = volume_node_from_image(scene, ct, "Phantom CT")
    entry = next(e for e in segmenting.model_entries(root / "models") if e.spec.id == "unhashed")
    managed = ManagedWorker()
    try:
        reads = []
        # The second run finds the model loaded; the third's input is gone before the worker reads it.
        for name in ("first", "second", "broken"):
            run = segmenting.SegmentationRun(
                volume, entry, "cpu", "SpleenSeg", sys.executable, root / "models", tmp_path, worker=managed
            )
            if name == "broken":
                run.input_path.unlink()
            run.start()
            reads.append((run, events_until_finished_read(run)))
    finally:
        managed.shutdown()
    seen = {event.kind for _run, events in reads for event in events}
    assert seen >= {
        EventKind.MODEL,
        EventKind.STAGE,
        EventKind.PROGRESS,
        EventKind.WARNING,
        EventKind.RESULT,
        EventKind.ERROR,
        EventKind.FINISHED,
    }
    assert [run.model_reused for run, _events in reads[:2]] == [False, True]
    assert [run.state for run, _events in reads] == [JobState.SUCCEEDED, JobState.SUCCEEDED, JobState.FAILED]


def events_until_finished_read(run) -> list[JobEvent]:
    """Every event of ``run``'s request, each read by the run as its poll would, checking what it made of it."""
    events: list[JobEvent] = []
    deadline = time.monotonic() + 180.0
    while not run.finished or not any(e.kind is EventKind.FINISHED for e in events):
        assert time.monotonic() < deadline, f"no finished event; seen {[e.kind for e in events]}"
        for event in run.request.poll():
            in_protocol(event)
            log_before = len(run.status.log)
            run.read(event)
            data, added = event.data, run.status.log[log_before:]
            if event.kind is EventKind.STAGE:
                assert run.status.stage == data["stage"]
            elif event.kind is EventKind.PROGRESS:
                assert run.status.percent == data["percent"]
            elif event.kind in (EventKind.MESSAGE, EventKind.WARNING):
                assert added and added[-1].endswith(data["text"])
            elif event.kind is EventKind.MODEL:
                assert run.model_reused is data["reused"] and data["model"] in added[-1]
            elif event.kind is EventKind.RESULT:
                assert added[0] == f"Segmentation written in {data['seconds']:.1f} s"
            elif event.kind is EventKind.ERROR:
                assert added == [f"Error: {data['type']}: {data['text']}"]
            elif event.kind is EventKind.FINISHED:
                assert run.status.stage == ("done" if event.state is JobState.SUCCEEDED else "failed")
            events.append(event)
        time.sleep(0.05)
    return events


def test_training_sends_only_protocol_events_and_the_training_panel_reads_each(tmp_path):
    dataset = sphere_dataset_folder(tmp_path / "dataset", cases=2)
    models = tmp_path / "models"
    run = training.TrainingRun(dataset, "tiny", "protocol", models, sys.executable, "cpu", epochs=2).start()
    events = []
    for event in events_until_finished(run.job, timeout_s=300.0):
        run.log = []
        new_epoch = run.read(in_protocol(event))
        assert new_epoch is (event.kind is EventKind.PROGRESS)
        if event.kind is EventKind.PROGRESS:
            assert run.history[-1] is event.data and run.fraction == event.data["percent"] / 100
            assert run.log[0].startswith(f"epoch {event.data['epoch']}: loss ")
        elif event.kind is EventKind.RESULT:
            assert run.summary is event.data and run.log[0].startswith(f"model written to {models / 'protocol'}")
        elif event.kind is EventKind.FINISHED:
            assert run.log == ["training succeeded"]
        events.append(event)
    assert [e.kind for e in events[-2:]] == [EventKind.RESULT, EventKind.FINISHED]
    assert [h["epoch"] for h in run.history] == [1, 2] and run.fraction == 1.0
    assert run.model().id == "protocol"

    # A damaged checkpoint: the child's error event, read into the log in the command line's one line.
    (models / "broken").mkdir()
    (models / "broken" / "checkpoint_latest.pt").write_bytes(b"PK\x03\x04 cut off")
    broken = training.TrainingRun(dataset, "tiny", "broken", models, sys.executable, "cpu", resume=True).start()
    errors = [in_protocol(e) for e in events_until_finished(broken.job) if e.kind is EventKind.ERROR]
    assert len(errors) == 1
    broken.read(errors[0])
    assert broken.log == [f"Error: {errors[0].data['type']}: {errors[0].data['text']}"]
