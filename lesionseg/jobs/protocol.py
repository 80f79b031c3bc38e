"""The job protocol: what a background job prints on stdout, one JSON object a line, and how its reader parses it.

Producers: ``lesionseg segment --progress jsonl`` (:mod:`lesionseg.commands.segment`; stages and percent come from
:mod:`lesionseg.inference.progress`), the warm worker (:mod:`lesionseg.jobs.worker`), and ``lesionseg train
--progress jsonl`` (:mod:`lesionseg.commands.train`; one event per epoch from :mod:`lesionseg.training.loop`).
Readers: :class:`lesionseg.jobs.Job` and :class:`lesionseg.jobs.WorkerRequest`, polled by the modules'
``SegmentationRun`` and ``TrainingRun`` (LesionSegLib).

Every line holds ``"event"``, one of :class:`EventKind`. :data:`EVENTS` says what each kind carries (parsed into
:data:`FIELDS`), and is the only place that does. The warm worker tags each event of a request with ``"request"``.
A line that is not an event reaches the reader as an ``output`` event, and the reader adds ``finished`` when the
job ends.

Cancel: the reader sends SIGTERM to the job's process group, then SIGKILL after a grace period. A producer calls
:func:`exit_on_terminate` first, so that SIGTERM unwinds its atomic writes and leaves no half-written output.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TextIO

from lesionseg.errors import EXIT_FAILURE, describe


class JobState(Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed out"

    @property
    def finished(self) -> bool:
        return self not in (JobState.PENDING, JobState.RUNNING)


class EventKind(Enum):
    READY = "ready"
    STAGE = "stage"
    PROGRESS = "progress"
    MESSAGE = "message"
    WARNING = "warning"
    RESULT = "result"
    ERROR = "error"
    MODEL = "model"
    OUTPUT = "output"
    FINISHED = "finished"


# Each kind's fields and what they mean: the one place that says so. Every event may also carry "request" (the
# warm worker's request id). A kind in the first column holds for the lines below it.
EVENTS = """
ready    pid               the warm worker's process id; it reads requests from now on
stage    stage             the segmentation stage begun: load, preprocess, inference, postprocess or write
progress percent           0-100 over the whole job; never goes back
         stage             the stage it belongs to (segment), train / train-stage1 / train-stage2 (train), or rank
         windows_done      segment, inference stage: sliding windows computed so far
         windows_total     segment, inference stage: sliding windows in all
         cascade           segment: 'coarse' while a two-step model's coarse stage runs
         tta_pass          segment --uncertainty tta, inference stage: the member pass running (1-based)
         tta_passes        segment --uncertainty tta, inference stage: passes in all (the cost: N sliding windows)
         epoch             train: the epoch just finished (1-based); with it come that epoch's figures below
         loss              train: mean training loss of the epoch
         lr                train: learning rate the epoch ran with
         iterations        train: batches in the epoch
         samples           train: samples in the epoch
         train_s           train: seconds of training in the epoch
         time_s            train: seconds of the epoch, validation included
         elapsed_s         train: seconds of all epochs so far, this run and the runs it resumed
         dice              train, validated epochs: Dice per label name, mean over the validation cases
         dice_mean         train, validated epochs: mean of dice
         dice_pooled       train, validated epochs: Dice per label name over all validation voxels at once
         dice_pooled_mean  train, validated epochs: mean of dice_pooled
         val_loss          train, nnU-Net: the epoch's validation loss
         dice_ema          train, nnU-Net: the moving average of dice_mean that picks checkpoint_best
         cases_done        rank: cases scored so far
         cases_total       rank: cases in all
message  text              a line for the log
warning  text              a line for the log that the user must see (also kept on the result)
model    model             warm worker: the model id the request runs
         reused            true when the model was kept loaded from the previous request
         dropped           the model id unloaded for it, or null
         pid               the worker's process id
         seconds           seconds spent loading the model (about 0 when reused)
result   output            the file written (segment; rank: the JSON) or the model folder (train)
         input             segment: the (first) input image
         inputs            segment, nnU-Net with several channels: channel name to input path
         model             segment: model id (or nnU-Net folder)
         model_version     segment: the model's version
         labels            segment: each label of the labelmap, with whether it is present
         device            segment: the device the network ran on
         backend           segment: torch or openvino
         precision         segment: the network's precision
         threshold         segment: the probability cut used, or null for the most probable class
         warnings          segment: the texts of the run's warning events
         seconds           segment: wall-clock seconds of the run
         engine            segment and train: 'nnunet' for an nnU-Net result folder or training
         uncertainty       segment --uncertainty tta: passes (the cost), flips, pass_seconds, and the files beside
         nnunet            segment, nnU-Net: configuration, folds and test-time augmentation used
         model_reused      warm worker: the model event's reused, repeated
         nnunet_results    train, nnU-Net: the trained configuration folder in the work folder
         last_epoch        train: the last epoch run
         best_epoch        train: the epoch whose weights were kept
         best_dice         train: that epoch's validation score
         stopped_early     train: why training stopped before its last epoch, or null
         ranking           rank: model, method and the cases most uncertain first, each with its scores
error    type              the exception's class name
         text              the one line the command line prints for it, never a traceback
         exit_code         the exit status the command ends with
         traceback         segment --verbose and the warm worker, for an unexpected error only
output   text              a stdout line that is not an event (added by the reader)
finished state             a JobState value: succeeded, failed, cancelled or timed out (added by the reader)
         returncode        the process's exit status (null for a warm-worker request: its process goes on)
         type              the error type when it did not succeed
         text              the error text when it did not succeed
"""


def _fields(table: str) -> dict[EventKind, dict[str, str]]:
    fields: dict[EventKind, dict[str, str]] = {}
    kind = None
    for line in table.strip("\n").splitlines():
        if not line.startswith(" "):
            kind = EventKind(line.split()[0])
            line = line[len(kind.value) :]
        name, meaning = line.split(maxsplit=1)
        fields.setdefault(kind, {})[name] = meaning
    return fields


FIELDS = _fields(EVENTS)
TAG = "request"


@dataclass(frozen=True)
class JobEvent:
    """One parsed event: its kind, and the whole JSON object (``"event"`` included) as ``data``."""

    kind: EventKind
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def percent(self) -> float | None:
        return self.data.get("percent")

    @property
    def state(self) -> JobState | None:
        """A finished event's job state."""
        value = self.data.get("state")
        return None if self.kind is not EventKind.FINISHED or value is None else JobState(value)

    @classmethod
    def from_line(cls, line: str) -> JobEvent:
        return parse_line(line)


def parse_line(line: str) -> JobEvent:
    """The event a stdout line holds; a line that is not one becomes an ``output`` event with its text."""
    text = line.rstrip("\r\n")
    try:
        data = json.loads(text)
        return JobEvent(EventKind(data.get("event")), data)
    except (json.JSONDecodeError, ValueError, TypeError, AttributeError):
        return JobEvent(EventKind.OUTPUT, output(text))


def write_event(event: dict[str, Any], stream: TextIO | None = None) -> None:
    """Print one event as its own line, flushed at once: the reader shows it while the job runs."""
    stream = sys.stdout if stream is None else stream
    stream.write(json.dumps(event) + "\n")
    stream.flush()


def exit_on_terminate() -> None:
    """Make SIGTERM (a cancel) raise SystemExit, which unwinds the atomic writes: no half-written output stays.

    Only in this process: a child it forks (nnU-Net's and torch's worker pools) gets the default SIGTERM back.
    ``multiprocessing.Pool`` ends its workers with SIGTERM; a worker that raised SystemExit instead could swallow
    it at an unlucky point and wait for a task forever, and the pool's ``join`` with it (an nnU-Net training hung
    so in its dataset fingerprint)."""
    global _fork_hook
    signal.signal(signal.SIGTERM, _terminate)
    if not _fork_hook:
        os.register_at_fork(after_in_child=_default_terminate)
        _fork_hook = True


_fork_hook = False


def _default_terminate() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


_terminated_by: int | None = None


def terminated_by() -> int | None:
    """The signal that asked this process to end (None: none). A library that catches SystemExit and raises
    another error instead (torch's tracing, under OpenVINO's conversion, does) would otherwise make a cancel look
    like a failure; the code that reports errors asks this first."""
    return _terminated_by


def _terminate(signum: int, _frame: Any) -> None:
    global _terminated_by
    _terminated_by = signum
    raise SystemExit(128 + signum)


# --- constructors: one per kind, taking that kind's FIELDS ---------------------------------------------------


def ready(pid: int) -> dict[str, Any]:
    return {"event": EventKind.READY.value, "pid": pid}


def stage(name: str) -> dict[str, Any]:
    return {"event": EventKind.STAGE.value, "stage": name}


def progress(percent: float, stage_name: str, **figures: Any) -> dict[str, Any]:
    return {"event": EventKind.PROGRESS.value, "percent": percent, "stage": stage_name, **figures}


def epoch_progress(epoch: int, total_epochs: int, figures: dict[str, Any]) -> dict[str, Any]:
    """A training epoch's event: its percent of the run and the epoch's figures (epoch, loss, dice_mean, ...)."""
    return progress(round(100 * epoch / total_epochs, 2), "train", **figures)


def message(text: str) -> dict[str, Any]:
    return {"event": EventKind.MESSAGE.value, "text": text}


def warning(text: str) -> dict[str, Any]:
    return {"event": EventKind.WARNING.value, "text": text}


def model(model_id: str, reused: bool, dropped: str | None, pid: int, seconds: float) -> dict[str, Any]:
    return {
        "event": EventKind.MODEL.value,
        "model": model_id,
        "reused": reused,
        "dropped": dropped,
        "pid": pid,
        "seconds": seconds,
    }


def result(**fields: Any) -> dict[str, Any]:
    return {"event": EventKind.RESULT.value, **fields}


def error(exception: BaseException, traceback_text: str | None = None) -> dict[str, Any]:
    """The error event of ``exception``; ``traceback_text`` is added for an unexpected error only (a bug to
    report), never for a user's mistake, whose one line says all."""
    text, status = describe(exception)
    event = {"event": EventKind.ERROR.value, "type": type(exception).__name__, "text": text, "exit_code": status}
    if traceback_text and status == EXIT_FAILURE:
        event["traceback"] = traceback_text
    return event


def output(text: str) -> dict[str, Any]:
    """A stdout line that is not an event, as the reader passes it on."""
    return {"event": EventKind.OUTPUT.value, "text": text}


def finished(
    state: JobState, error_type: str | None, error_text: str | None, returncode: int | None = None
) -> dict[str, Any]:
    """The last event of a job, made by the reader (not the child) once the job has ended."""
    return {
        "event": EventKind.FINISHED.value,
        "state": state.value,
        "returncode": returncode,
        "type": error_type,
        "text": error_text,
    }


def tagged(event: dict[str, Any], request_id: str | None) -> dict[str, Any]:
    """``event`` as the warm worker sends it for request ``request_id``."""
    return {**event, TAG: request_id}
