"""The warm worker: a long-lived child that keeps torch imported and models loaded between segmentations.

Protocol (JSON lines): the worker prints ``{"event": "ready"}``, then reads requests on stdin::

    {"id": "r1", "command": "segment", "model": ID_OR_DIR, "input": PATH, "output": PATH,
     "device": "auto", "crop_body": false, "threshold": null, "models_dir": null}
    {"command": "shutdown"}

and answers each with the same events as ``segment --progress jsonl``, every one tagged ``"request": id``,
ending with ``result`` or ``error``.  :class:`WarmWorker` is the client side.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import traceback
import uuid
from pathlib import Path
from typing import Any, TextIO

from lesionseg.jobs.runner import EventKind, Job, JobEvent, JobState, drain


def serve(stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    """Answer requests until stdin closes or a shutdown request arrives."""
    cache: dict[tuple, Any] = {}

    def send(event: dict[str, Any]) -> None:
        stdout.write(json.dumps(event) + "\n")
        stdout.flush()

    send({"event": "ready"})
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
            if command != "segment":
                raise ValueError(f"unknown worker command {command!r}; use segment or shutdown")
            from lesionseg.inference.pipeline import load_model, segment_file

            def tagged(event: dict[str, Any], rid=request_id) -> None:
                send({**event, "request": rid})

            key = (str(request["model"]), request.get("device", "auto"), request.get("models_dir"))
            if key not in cache:
                cache[key] = load_model(key[0], key[1], key[2])
            else:
                from lesionseg.models.weights import verify_weights

                verify_weights(cache[key].spec)  # the file may have changed since it was loaded
            result = segment_file(
                cache[key],
                request["input"],
                request["output"],
                key[1],
                tagged,
                bool(request.get("crop_body")),
                threshold=request.get("threshold"),
            )
            tagged({**result, "cached_model": True})
        except Exception as error:  # one bad request must not end the worker
            send(
                {
                    "event": "error",
                    "type": type(error).__name__,
                    "text": str(error),
                    "traceback": traceback.format_exc(),
                    "request": request_id,
                }
            )
    return 0


class WorkerRequest:
    """One request to a warm worker; polled like a :class:`Job`."""

    def __init__(self, worker: "WarmWorker", request_id: str):
        self.worker = worker
        self.id = request_id
        self.state = JobState.RUNNING
        self.result: dict[str, Any] | None = None
        self.error_type: str | None = None
        self.error_text: str | None = None
        self._events: queue.Queue[JobEvent] = queue.Queue()
        self._done = threading.Event()

    def _deliver(self, event: JobEvent) -> None:
        if event.kind is EventKind.RESULT:
            self.result, self.state = event.data, JobState.SUCCEEDED
        elif event.kind is EventKind.ERROR:
            self.state = JobState.FAILED
            self.error_type, self.error_text = event.data.get("type"), event.data.get("text")
        self._events.put(event)
        if self.state.finished:
            self._done.set()

    def poll(self) -> list[JobEvent]:
        return drain(self._events)

    def wait(self, timeout_s: float | None = None) -> JobState:
        self._done.wait(timeout_s)
        return self.state

    def cancel(self) -> None:
        """A request in flight cannot be interrupted alone: the worker (and its tree) is stopped."""
        self.worker.stop()


class WarmWorker:
    """Client of ``python -m lesionseg worker``; start once, submit many segmentations."""

    def __init__(self, python: str | None = None, env: dict[str, str] | None = None):
        self.job = Job([python or sys.executable, "-m", "lesionseg", "worker"], env=env, keep_stdin=True)
        self._requests: dict[str, WorkerRequest] = {}
        self._ready = threading.Event()
        self._pump: threading.Thread | None = None

    def start(self, timeout_s: float = 60.0) -> "WarmWorker":
        self.job.start()
        self._pump = threading.Thread(target=self._dispatch, daemon=True)
        self._pump.start()
        if not self._ready.wait(timeout_s):
            self.stop()
            raise RuntimeError(f"the worker did not start within {timeout_s} s: {self.job.stderr_text[-2000:]}")
        return self

    def _dispatch(self) -> None:
        while True:
            try:
                event = self.job._events.get(timeout=0.1)
            except queue.Empty:
                if self.job.state.finished:
                    return
                continue
            if event.kind is EventKind.READY:
                self._ready.set()
            elif event.kind is EventKind.FINISHED:
                for request in self._requests.values():
                    if not request.state.finished:
                        request.error_type, request.error_text = "WorkerExited", self.job.stderr_text[-4000:]
                        request.state = JobState.CANCELLED if self.job.state is JobState.CANCELLED else JobState.FAILED
                        request._done.set()
                return
            elif event.data.get("request") in self._requests:
                self._requests[event.data["request"]]._deliver(event)

    def submit(
        self,
        model: str,
        input_path,
        output_path,
        device: str = "auto",
        crop_body: bool = False,
        threshold: float | None = None,
    ) -> WorkerRequest:
        if self.job._process is None or self.job.state.finished:
            raise RuntimeError("the worker is not running; start() it first")
        request_id = uuid.uuid4().hex[:12]
        request = WorkerRequest(self, request_id)
        self._requests[request_id] = request
        message = {
            "id": request_id,
            "command": "segment",
            "model": str(model),
            "input": str(Path(input_path)),
            "output": str(Path(output_path)),
            "device": device,
            "crop_body": crop_body,
            "threshold": threshold,
        }
        stdin = self.job._process.stdin
        stdin.write(json.dumps(message) + "\n")
        stdin.flush()
        return request

    def stop(self) -> None:
        self.job.cancel()

    def close(self, timeout_s: float = 10.0) -> None:
        """Ask the worker to exit; kill it if it does not."""
        process = self.job._process
        if process is not None and process.poll() is None:
            try:
                process.stdin.write(json.dumps({"command": "shutdown"}) + "\n")
                process.stdin.flush()
                process.wait(timeout=timeout_s)
            except Exception:
                self.stop()
