"""Progress events of a segmentation (:mod:`lesionseg.jobs.protocol`), with a percent that follows the real work.

The percent is a weighted sum of stages: load (image and model) 5, preprocess 10, sliding window 70
(advancing per batch of windows), postprocess (inversion to the input grid and clean-up) 10, write 5.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from lesionseg.jobs import protocol

STAGE_WEIGHTS: dict[str, float] = {"load": 5, "preprocess": 10, "inference": 70, "postprocess": 10, "write": 5}
STAGES = tuple(STAGE_WEIGHTS)
EventSink = Callable[[dict[str, Any]], None]


class Progress:
    """Turns stage changes and fractions into ``stage``/``progress``/``message``/``warning`` events."""

    def __init__(self, sink: EventSink | None = None, min_interval_s: float = 0.0):
        self.sink = sink
        self.stage_name = ""
        self.percent = 0.0
        self.min_interval_s = min_interval_s
        self._last_emit = 0.0

    def _emit(self, event: dict[str, Any]) -> None:
        if self.sink is not None:
            self.sink(event)

    def stage(self, name: str) -> None:
        if name not in STAGE_WEIGHTS:
            raise ValueError(f"unknown stage {name!r}")
        self.stage_name = name
        self._emit(protocol.stage(name))
        self.update(0.0, force=True)

    def update(self, fraction: float, force: bool = False, **extra: Any) -> None:
        done = sum(STAGE_WEIGHTS[s] for s in STAGES[: STAGES.index(self.stage_name)]) if self.stage_name else 0.0
        percent = done + STAGE_WEIGHTS.get(self.stage_name, 0.0) * min(max(fraction, 0.0), 1.0)
        percent = round(max(percent, self.percent), 1)  # never goes back
        now = time.monotonic()
        if not force and percent < 100 and now - self._last_emit < self.min_interval_s:
            return
        self.percent = percent
        self._last_emit = now
        self._emit(protocol.progress(percent, self.stage_name, **extra))

    def message(self, text: str) -> None:
        self._emit(protocol.message(text))

    def warning(self, text: str) -> None:
        self._emit(protocol.warning(text))

    def finish(self) -> None:
        self.percent = 100.0
        self._emit(protocol.progress(100.0, "write"))


def recording_warnings(progress: EventSink | None, min_interval_s: float = 0.05) -> tuple[Progress, list[str]]:
    """A reporter that passes every event on to ``progress`` and keeps each warning's text in the returned list.

    The result event repeats these warnings, so a caller that keeps only the result still sees them.
    """
    warnings: list[str] = []

    def recorded(event: dict[str, Any]) -> None:
        if event.get("event") == protocol.EventKind.WARNING.value:
            warnings.append(str(event.get("text", "")))
        if progress is not None:
            progress(event)

    return Progress(recorded, min_interval_s=min_interval_s), warnings
