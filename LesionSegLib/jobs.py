"""What a module's background run shares, whatever it runs: its state, its failure message, cancel and clean-up.

A run (``SegmentationRun``, ``TrainingRun``) owns a work folder and one job of :mod:`lesionseg.jobs` (a
``Job``, or a warm worker's ``WorkerRequest``), and is polled by its widget from a timer. Qt-free.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lesionseg.errors import failure_line
from lesionseg.jobs import JobState


class BackgroundRun:
    """A run's lifecycle. A subclass sets ``work_dir`` and the texts below, and its ``job``."""

    what = "The run"  # starts the failure message: "<what> failed: ..."
    cancelled_text = "Cancelled."
    # Whether the job's stderr may explain a failure: not a warm worker's, which may hold an earlier request's lines.
    stderr_explains_failure = True
    work_dir: Path
    job: Any  # the Job or WorkerRequest (state, error text, stderr); None while there is none yet

    @property
    def state(self) -> JobState:
        job = self.job
        return JobState.PENDING if job is None else job.state

    @property
    def finished(self) -> bool:
        return self.state.finished

    def failure(self) -> str:
        """Why the run did not succeed, in one message (empty while running or after success)."""
        state = self.state
        if state is JobState.CANCELLED:
            return self.cancelled_text
        if state in (JobState.FAILED, JobState.TIMED_OUT):
            stderr = self.job.stderr_text if self.stderr_explains_failure else None
            return f"{self.what} failed: {failure_line(self.job.error_text, stderr)}"
        return ""

    def require_success(self, unfinished: str) -> None:
        """Raise, with the failure message (``unfinished`` while it runs), unless the run succeeded."""
        if self.state is not JobState.SUCCEEDED:
            raise RuntimeError(self.failure() or unfinished)

    def cancel(self) -> None:
        """End the job with its whole process tree, and delete the work folder."""
        job = self.job
        if job is not None:
            job.cancel()
        self.cleanup()

    def cleanup(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)
