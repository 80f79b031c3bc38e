"""Background segmentations without Qt: a child-process job runner, a warm worker, and the events they print
(:mod:`lesionseg.jobs.protocol`)."""

from lesionseg.jobs.runner import EventKind, Job, JobEvent, JobState, kill_process_tree, segment_command
from lesionseg.jobs.worker import ManagedWorker, WarmWorker, WorkerRequest

__all__ = [
    "EventKind",
    "Job",
    "JobEvent",
    "JobState",
    "ManagedWorker",
    "WarmWorker",
    "WorkerRequest",
    "kill_process_tree",
    "segment_command",
]
