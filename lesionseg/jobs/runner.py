"""A Qt-free runner for background segmentations: a child process, its JSON-lines events, cancel and timeout.

The events are those of :mod:`lesionseg.jobs.protocol`.

The GUI starts a :class:`Job`, calls :meth:`Job.poll` from a timer to drain events (never blocks), and may
:meth:`Job.cancel` it: the child runs in its own process group (POSIX session, or a Windows process group),
and cancel ends the whole group, grandchildren included: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lesionseg.errors import exit_cause, unexpected_exit
from lesionseg.jobs import protocol
from lesionseg.jobs.protocol import EventKind, JobEvent, JobState


def drain(events: queue.Queue) -> list:
    """Everything waiting in ``events``, without blocking."""
    out = []
    while True:
        try:
            out.append(events.get_nowait())
        except queue.Empty:
            return out


def segment_command(
    model: str,
    input_path: str | Path,
    output_path: str | Path,
    device: str = "auto",
    python: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """argv of ``python -m lesionseg segment ... --progress jsonl`` (pass Slicer's PythonSlicer as ``python``)."""
    return [
        python or sys.executable,
        "-m",
        "lesionseg",
        "segment",
        "--model",
        str(model),
        "--input",
        str(input_path),
        "--output",
        str(output_path),
        "--device",
        device,
        "--progress",
        "jsonl",
        *extra,
    ]


# Win32 values (winbase.h / winuser.h); subprocess defines them only on Windows.
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000
STARTF_USESHOWWINDOW = 0x00000001
SW_HIDE = 0


def child_process_options(os_name: str = os.name, startupinfo_type: Any = None) -> dict[str, Any]:
    """The Popen keywords that put a child in its own process group and, on Windows, keep it windowless.

    Slicer is a GUI application with no console, so Windows gives every console child (PythonSlicer,
    taskkill) a console window of its own unless told not to. Slicer's ``launchConsoleProcess`` hides it
    with a STARTUPINFO asking for SW_HIDE; CREATE_NO_WINDOW also stops the console from being created.
    ``startupinfo_type`` is ``subprocess.STARTUPINFO`` (default), which exists on Windows only.
    """
    if os_name != "nt":
        return {"start_new_session": True}
    startupinfo_type = startupinfo_type or subprocess.STARTUPINFO  # type: ignore[attr-defined]
    return {
        "creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW,
        "startupinfo": startupinfo_type(dwFlags=STARTF_USESHOWWINDOW, wShowWindow=SW_HIDE),
    }


def kill_process_tree(process: subprocess.Popen, grace_s: float = 1.0) -> None:
    """End a child started by this module and everything in its process group."""
    if process.poll() is not None and os.name != "nt":
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # the leader is gone; its group may not be
        return
    if os.name == "nt":
        subprocess.run(  # taskkill is a console program too: no window for it either
            ["taskkill", "/T", "/F", "/PID", str(process.pid)],
            capture_output=True,
            check=False,
            creationflags=CREATE_NO_WINDOW,
            startupinfo=child_process_options()["startupinfo"],
        )
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def remove_partial_outputs(target: str | Path) -> None:
    """Delete temporary files that an interrupted atomic write of ``target`` may have left beside it."""
    target = Path(target)
    prefix = f".{target.name.split('.')[0]}."
    if target.parent.is_dir():
        for leftover in target.parent.glob(prefix + "*.part*"):
            with contextlib.suppress(OSError):
                leftover.unlink()


class Job:
    """One child process reporting JSON-lines events on stdout."""

    def __init__(
        self,
        argv: Sequence[str],
        timeout_s: float | None = None,
        output_path: str | Path | None = None,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        grace_s: float = 1.0,
        keep_stdin: bool = False,
    ):
        self.argv = [str(a) for a in argv]
        self.keep_stdin = keep_stdin  # the warm worker reads requests on it
        self.timeout_s = timeout_s
        self.output_path = output_path
        self.env = env
        self.cwd = cwd
        self.grace_s = grace_s
        self.state = JobState.PENDING
        self.returncode: int | None = None
        self.result: dict[str, Any] | None = None
        self.error_type: str | None = None
        self.error_text: str | None = None
        self.stderr_lines: deque[str] = deque(maxlen=400)
        self._events: queue.Queue[JobEvent] = queue.Queue()
        self._process: subprocess.Popen | None = None
        self._stop_reason: JobState | None = None
        self._lock = threading.Lock()
        self._stdin_lock = threading.Lock()  # one line at a time, from any thread
        self._done = threading.Event()
        self._readers: list[threading.Thread] = []

    @classmethod
    def segment(cls, model, input_path, output_path, device="auto", python=None, timeout_s=None, extra=()) -> "Job":
        return cls(segment_command(model, input_path, output_path, device, python, extra), timeout_s, output_path)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> "Job":
        if self._process is not None:
            raise RuntimeError("this job was already started")
        kwargs = child_process_options()
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._process = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE if self.keep_stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            env=env,
            cwd=self.cwd,
            **kwargs,
        )
        self.state = JobState.RUNNING
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        threading.Thread(target=self._watch, daemon=True).start()
        return self

    def _read_stdout(self) -> None:
        assert self._process and self._process.stdout
        for line in self._process.stdout:
            if not line.strip():
                continue
            event = protocol.parse_line(line)
            if event.kind is EventKind.RESULT:
                self.result = event.data
            elif event.kind is EventKind.ERROR:
                self.error_type = event.data.get("type")
                self.error_text = event.data.get("text")
            self._events.put(event)

    def _read_stderr(self) -> None:
        assert self._process and self._process.stderr
        for line in self._process.stderr:
            self.stderr_lines.append(line.rstrip("\n"))

    def _watch(self) -> None:
        assert self._process
        try:
            self._process.wait(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            self._stop(JobState.TIMED_OUT)
        self._process.wait()
        self._finish()

    def _stop(self, reason: JobState) -> None:
        with self._lock:
            if self._stop_reason is None and self._process is not None and self._process.poll() is None:
                self._stop_reason = reason
        if self._process is not None:
            kill_process_tree(self._process, self.grace_s)

    def _finish(self) -> None:
        assert self._process
        for reader in self._readers:  # let them take the child's last lines
            reader.join(timeout=2.0)
        self.returncode = self._process.returncode
        if self._stop_reason is not None:
            if self.output_path:
                remove_partial_outputs(self.output_path)
            self.state = self._stop_reason
            if self._stop_reason is JobState.TIMED_OUT:
                self.error_type, self.error_text = "TimeoutError", f"the job ran longer than {self.timeout_s} s"
        elif self.returncode == 0:
            self.state = JobState.SUCCEEDED
        else:
            self.state = JobState.FAILED
            if not self.error_type:  # it ended without an error event: its stderr may say why
                cause = exit_cause(self.stderr_lines)
                self.error_type = cause.split(":", 1)[0].strip() if ":" in cause else "ProcessError"
                self.error_text = self.stderr_text if cause else f"the process {unexpected_exit(self.returncode)}"
        finished = protocol.finished(self.state, self.error_type, self.error_text, self.returncode)
        self._events.put(JobEvent(EventKind.FINISHED, finished))
        self._done.set()

    def poll(self) -> list[JobEvent]:
        """New events since the last call; never blocks (call it from a GUI timer)."""
        return drain(self._events)

    def next_event(self, timeout_s: float) -> JobEvent | None:
        """The next event, waiting up to ``timeout_s`` for it (a reader thread, not a GUI); None if none came."""
        try:
            return self._events.get(timeout=timeout_s)
        except queue.Empty:
            return None

    @property
    def exhausted(self) -> bool:
        """Whether the job has ended and every event it gave, ``finished`` included, has been taken."""
        return self._done.is_set() and self._events.empty()

    @property
    def running(self) -> bool:
        """Whether the child process was started and has not exited."""
        return self._process is not None and self._process.poll() is None

    def send_line(self, text: str) -> None:
        """Write one line to the child's stdin (a job started with ``keep_stdin``); OSError when it is gone."""
        if self._process is None or self._process.stdin is None:
            raise BrokenPipeError("this job has no stdin to write to; start it with keep_stdin=True")
        with self._stdin_lock:
            self._process.stdin.write(text + "\n")
            self._process.stdin.flush()

    def cancel(self) -> None:
        """End the child and its whole process tree (SIGTERM, SIGKILL after the grace period)."""
        if self._process is None:
            self.state = JobState.CANCELLED
            return
        self._stop(JobState.CANCELLED)
        self._done.wait(timeout=self.grace_s + 5)

    def wait(self, timeout_s: float | None = None) -> JobState:
        """Block until the job ends (tests and scripts; a GUI polls instead)."""
        self._done.wait(timeout=timeout_s)
        return self.state

    @property
    def stderr_text(self) -> str:
        return "\n".join(self.stderr_lines)
