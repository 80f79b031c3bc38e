"""The warm worker: a long-lived child that keeps torch imported and the last model loaded between segmentations.

Requests (JSON lines): the worker prints a ``ready`` event (:mod:`lesionseg.jobs.protocol`), then reads on stdin::

    {"id": "r1", "command": "segment", "model": ID_OR_DIR, "input": PATH, "output": PATH,
     "device": "auto", "crop_body": false, "threshold": null, "models_dir": null, "uncertainty": "none",
     "backend": "auto", "precision": null, "allow_modality": null}
                               (a multi-channel model: "input": [PATH, ...], one per channel)
    {"command": "release"}     drop the loaded model (another model was chosen)
    {"command": "shutdown"}

(the keys after ``output`` may be left out; each means what the ``segment`` option of that name means) and answers
each segment request with the same events as ``segment --progress jsonl``, every one tagged
``"request": id``, ending with ``result`` or ``error``. Before the run a ``model`` event says whether the model
was loaded now (``"reused": false``) or kept from the previous request (``"reused": true``), and which model
was dropped for it. The worker holds one model at a time, so choosing another model frees the old one's memory;
it ends when stdin closes (idle) or when its next event finds no reader (busy), so it never outlives the
application that started it.

:class:`WarmWorker` is the client of one worker process; :class:`ManagedWorker` keeps one alive on demand,
replacing a cancelled or crashed one at the next request.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, TextIO

from lesionseg.errors import exit_cause, unexpected_exit
from lesionseg.jobs import protocol
from lesionseg.jobs.protocol import EventKind, JobEvent, JobState
from lesionseg.jobs.runner import Job, drain, remove_partial_outputs


def _model_key(spec: Any, device: str, backend: str = "auto", precision: str | None = None) -> tuple:
    """What makes a loaded model still the right one: its spec's content, its weights file as it is now, and the
    device, backend and precision it was loaded for."""
    weights = spec.weights_path
    stat = weights.stat() if weights is not None and weights.exists() else None
    stamp = None if stat is None else (stat.st_size, stat.st_mtime_ns)
    source = json.dumps(spec.source, sort_keys=True, default=str)
    return (spec.id, source, str(weights), stamp, device, backend, precision)


def _free_memory() -> None:
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def serve(stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    """Answer requests until stdin closes or a shutdown request arrives."""
    loaded: dict[str, Any] = {"key": None, "model": None}  # one model at a time

    def send(event: dict[str, Any]) -> None:
        protocol.write_event(event, stdout)

    def drop() -> str | None:
        dropped = None if loaded["model"] is None else loaded["model"].spec.id
        loaded.update(key=None, model=None)
        if dropped is not None:
            _free_memory()
        return dropped

    send(protocol.ready(os.getpid()))
    for line in stdin:
        if not line.strip():
            continue
        request_id = None
        try:
            request = json.loads(line)
            request_id = request.get("id")
            command = request.get("command")
            if command == "shutdown":
                break
            if command == "release":
                drop()
                continue
            if command != "segment":
                raise ValueError(f"unknown worker command {command!r}; use segment, release or shutdown")
            from lesionseg.inference.openvino_backend import check_backend, check_precision
            from lesionseg.inference.pipeline import load_model, resolve_spec, segment_file

            def tagged(event: dict[str, Any], rid=request_id) -> None:
                send(protocol.tagged(event, rid))

            device = request.get("device", "auto")
            backend, precision = check_backend(request.get("backend") or "auto"), request.get("precision")
            if precision is not None:
                check_precision(precision)  # before the loaded model is dropped: a bad option changes nothing
            spec = resolve_spec(str(request["model"]), request.get("models_dir"))
            key = _model_key(spec, device, backend, precision)
            reused = key == loaded["key"]
            dropped = None
            started = time.perf_counter()
            if not reused:
                # The weights were hashed when they were loaded; a kept model runs those bytes from memory, and
                # the key's size and mtime make a rewritten file load (and hash) again.
                dropped = drop()  # before loading the next one: never two models in memory
                loaded.update(model=load_model(spec, device, backend=backend, precision=precision), key=key)
            tagged(protocol.model(spec.id, reused, dropped, os.getpid(), round(time.perf_counter() - started, 3)))
            result = segment_file(
                loaded["model"],
                request["input"],
                request["output"],
                device,
                tagged,
                bool(request.get("crop_body")),
                threshold=request.get("threshold"),
                uncertainty=request.get("uncertainty") or "none",
                allow_modality=request.get("allow_modality"),
            )
            tagged({**result, "model_reused": reused})
        except Exception as error:  # one bad request must not end the worker
            signum = protocol.terminated_by()
            if signum is not None:  # a cancel, whose SystemExit a library turned into this error: end as asked
                raise SystemExit(128 + signum) from error
            send(protocol.tagged(protocol.error(error, traceback.format_exc()), request_id))
    return 0


class WorkerRequest:
    """One request to a warm worker; polled like a :class:`Job` (its last event is ``finished``)."""

    def __init__(self, worker: "WarmWorker", request_id: str, output_path: str | Path | None = None):
        self.worker = worker
        self.id = request_id
        self.output_path = output_path
        self.state = JobState.RUNNING
        self.result: dict[str, Any] | None = None
        self.error_type: str | None = None
        self.error_text: str | None = None
        self._stop_reason: JobState | None = None
        self._answered = False  # whether the worker has sent anything for it
        self._message: dict[str, Any] = {}
        self._resubmit: Any = None  # ManagedWorker's: send an unanswered request to a fresh worker, once
        self._events: queue.Queue[JobEvent] = queue.Queue()
        self._done = threading.Event()
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The worker process answering this request."""
        return self.worker.pid

    @property
    def stderr_text(self) -> str:
        return self.worker.job.stderr_text

    def _deliver(self, event: JobEvent) -> None:
        self._answered = True
        if event.kind is EventKind.ERROR and self._stop_reason is not None:
            # sent while the cancel unwound the worker (a library may turn its SystemExit into another error):
            # the run ends as it was stopped, not as failed
            self._worker_ended()
        elif event.kind is EventKind.RESULT:
            self._end(JobState.SUCCEEDED, result=event.data, event=event)
        elif event.kind is EventKind.ERROR:
            self._end(JobState.FAILED, event.data.get("type"), event.data.get("text"), event=event)
        else:
            self._events.put(event)

    def _end(
        self,
        state: JobState,
        error_type: str | None = None,
        error_text: str | None = None,
        result: dict[str, Any] | None = None,
        event: JobEvent | None = None,
    ) -> None:
        with self._lock:
            if self.state.finished:
                return
            self.state, self.error_type, self.error_text, self.result = state, error_type, error_text, result
            if event is not None:
                self._events.put(event)
            self._events.put(JobEvent(EventKind.FINISHED, protocol.finished(state, error_type, error_text)))
        self._done.set()

    def _worker_ended(self) -> None:
        """The worker process ended before answering: say why in one line."""
        job = self.worker.job
        if self._stop_reason is not None:
            if self.output_path:
                remove_partial_outputs(self.output_path)
            if self._stop_reason is JobState.TIMED_OUT:
                self._end(JobState.TIMED_OUT, "TimeoutError", "the segmentation ran past its time limit")
            else:
                self._end(JobState.CANCELLED, "Cancelled", "cancelled")
            return
        resubmit, self._resubmit = self._resubmit, None
        if not self._answered and not self.worker.stopping and resubmit is not None and resubmit(self):
            return  # it had died before reading the request (a crash while idle): a fresh worker has it now
        cause = exit_cause(job.stderr_lines)
        if job.state is JobState.CANCELLED:
            text = "the background worker was stopped (another segmentation was cancelled); segment again"
        elif cause:
            text = f"the background worker ended: {cause}"
        else:
            text = f"the background worker {unexpected_exit(job.returncode)}; segment again"
        self._end(JobState.FAILED, "WorkerExited", text)

    def poll(self) -> list[JobEvent]:
        return drain(self._events)

    def wait(self, timeout_s: float | None = None) -> JobState:
        self._done.wait(timeout_s)
        return self.state

    def cancel(self, reason: JobState = JobState.CANCELLED) -> None:
        """A request in flight cannot be interrupted alone: the worker and its whole process tree are ended
        (the next request starts a fresh worker)."""
        if self.state.finished:
            return
        self._stop_reason = reason
        self.worker.stop()
        if not self._done.wait(5.0):  # the dispatcher marks it; never leave the caller with a running state
            self._worker_ended()


class WarmWorker:
    """Client of ``python -m lesionseg worker``; start once, submit many segmentations."""

    def __init__(self, python: str | None = None, env: dict[str, str] | None = None):
        self.job = Job([python or sys.executable, "-m", "lesionseg", "worker"], env=env, keep_stdin=True)
        self._requests: dict[str, WorkerRequest] = {}
        self._ready = threading.Event()
        self._pump: threading.Thread | None = None
        self.stopping = False  # stopped or closed on purpose, not crashed

    @property
    def pid(self) -> int | None:
        return self.job.pid

    @property
    def alive(self) -> bool:
        return self.job.running and not self.job.state.finished

    def start(self, timeout_s: float | None = 60.0) -> "WarmWorker":
        """Start the process; wait up to ``timeout_s`` for it to be ready (None: do not wait, requests queue)."""
        self.job.start()
        self._pump = threading.Thread(target=self._dispatch, daemon=True)
        self._pump.start()
        if timeout_s is not None and not self._ready.wait(timeout_s):
            self.stop()
            raise RuntimeError(f"the worker did not start within {timeout_s} s: {self.job.stderr_text[-2000:]}")
        return self

    def _dispatch(self) -> None:
        while True:
            event = self.job.next_event(0.1)
            if event is None:
                if not self.job.exhausted:
                    continue
                event = JobEvent(EventKind.FINISHED, {})
            if event.kind is EventKind.READY:
                self._ready.set()
            elif event.kind is EventKind.FINISHED:
                for request in list(self._requests.values()):
                    request._worker_ended()
                self._requests.clear()
                return
            else:
                request = self._requests.get(event.data.get(protocol.TAG))
                if request is not None:
                    request._deliver(event)
                    if request.state.finished:
                        self._requests.pop(request.id, None)

    def submit(
        self,
        model: str,
        input_path,
        output_path,
        device: str = "auto",
        crop_body: bool = False,
        threshold: float | None = None,
        models_dir: str | Path | None = None,
        uncertainty: str = "none",
        backend: str = "auto",
        precision: str | None = None,
        allow_modality: str | None = None,
    ) -> WorkerRequest:
        """Queue a segmentation; raises OSError when the worker is gone (start another). ``backend``,
        ``precision`` and ``allow_modality`` mean what ``segment``'s options of those names mean.

        ``uncertainty="tta"`` also writes the uncertainty volumes and lesion table beside ``output_path`` (as
        ``segment --uncertainty tta``)."""
        if not self.alive:
            raise BrokenPipeError("the worker is not running; start() it first")
        request_id = uuid.uuid4().hex[:12]
        request = WorkerRequest(self, request_id, output_path)
        # a multi-channel model's images: one path per channel, in its order
        multi = isinstance(input_path, (list, tuple))
        inputs = [str(Path(p)) for p in input_path] if multi else str(Path(input_path))
        request._message = {
            "id": request_id,
            "command": "segment",
            "model": str(model),
            "input": inputs,
            "output": str(Path(output_path)),
            "device": device,
            "crop_body": crop_body,
            "threshold": threshold,
            "models_dir": None if models_dir is None else str(models_dir),
            "uncertainty": uncertainty,
            "backend": backend,
            "precision": precision,
            "allow_modality": allow_modality,
        }
        self.adopt(request)
        return request

    def adopt(self, request: WorkerRequest) -> None:
        """Send ``request`` to this worker (a request is moved here when its first worker died before it)."""
        if not self.alive:
            raise BrokenPipeError("the worker is not running; start() it first")
        request.worker = self
        self._requests[request.id] = request
        try:
            self._send(request._message)
        except OSError:
            self._requests.pop(request.id, None)
            raise

    def release(self) -> None:
        """Drop the loaded model (its memory goes back to the system); the next request loads its own."""
        if self.alive:
            self._send({"command": "release"})

    def _send(self, message: dict[str, Any]) -> None:
        self.job.send_line(json.dumps(message))

    def stop(self) -> None:
        """Kill the worker and its whole process tree now."""
        self.stopping = True
        self.job.cancel()

    def close(self, timeout_s: float = 10.0) -> None:
        """Ask the worker to exit; kill it if it does not."""
        self.stopping = True
        if self.job.running:
            try:
                self._send({"command": "shutdown"})
            except (OSError, ValueError):  # its stdin is broken or closed: it is going anyway
                self.stop()
            else:
                if not self.job.wait(timeout_s).finished:
                    self.stop()
        self.job.wait(5.0)


class ManagedWorker:
    """One warm worker kept alive on demand: started by the first request, replaced when it was cancelled,
    crashed or started with other settings, so a request never goes to a stale process."""

    def __init__(self, python: str | None = None, env: dict[str, str] | None = None):
        self.python, self.env = python, env
        self.worker: WarmWorker | None = None
        self.model: str | None = None  # the model of the last request: what the worker holds
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        worker = self.worker
        return worker.pid if worker is not None and worker.alive else None

    def configure(self, python: str | None, env: dict[str, str] | None) -> None:
        """Run later requests with this Python and environment; a worker started otherwise is shut down."""
        with self._lock:
            if (python, env) != (self.python, self.env):
                self._shutdown_locked(timeout_s=2.0)
                self.python, self.env = python, env

    def _running(self) -> WarmWorker:
        worker = self.worker
        if worker is None or not worker.alive:
            if worker is not None:
                worker.stop()  # a crashed worker's group may still hold grandchildren
            worker = self.worker = WarmWorker(self.python, self.env).start(timeout_s=None)
            self.model = None
        return worker

    def submit(self, model: str, input_path, output_path, **options: Any) -> WorkerRequest:
        with self._lock:
            for attempt in range(2):
                worker = self._running()
                try:
                    request = worker.submit(model, input_path, output_path, **options)
                except OSError:  # it died between the check and the write
                    worker.stop()
                    self.worker = None
                    if attempt:
                        raise
                    continue
                self.model = str(model)
                request._resubmit = self._resubmit
                return request
            raise AssertionError("unreachable")

    def _resubmit(self, request: WorkerRequest) -> bool:
        """Give a fresh worker a request whose worker died before reading it; False if that fails too."""
        with self._lock:
            if self.worker is not None and self.worker is not request.worker and self.worker.alive:
                worker = self.worker
            elif self.worker is request.worker:
                worker = self._running()
            else:
                return False  # shut down meanwhile
            try:
                worker.adopt(request)
            except OSError:
                return False
            self.model = request._message.get("model")
            return True

    def release(self, unless: str | None = None) -> None:
        """Have the worker drop its model, unless it is ``unless`` (the model just chosen)."""
        with self._lock:
            if self.worker is not None and self.model is not None and self.model != unless:
                with contextlib.suppress(OSError):
                    self.worker.release()
                self.model = None

    def shutdown(self, timeout_s: float = 2.0) -> None:
        """End the worker (asked first, killed with its tree after ``timeout_s``)."""
        with self._lock:
            self._shutdown_locked(timeout_s)

    def _shutdown_locked(self, timeout_s: float) -> None:
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.close(timeout_s)
