"""Remembered weight hashes, so that listing the models does not read every weights file each time.

Opening a LesionSeg module lists the models, and the list says whether each model's weights match their
published hash. Hashing a 20 MB file on the GUI thread every time a panel opens is the cost this saves.

What the cache guarantees, and what it does not:

* An entry is used only while the file's resolved path, size and modification time (nanoseconds) are the
  ones it had when it was hashed. Any ordinary change to a file (a new download, a copy, an edit, a
  truncation) changes its size or its mtime, so it is hashed again.
* A change that keeps the size and puts the old mtime back (``os.utime``, some restore tools) is **not**
  seen by the list: it still shows the remembered state. The list is a convenience, not the check that
  protects a run: segmenting hashes the file it loads every time (``verify_weights`` without a cache, in
  the background job), so altered weights are refused there whatever the list says.
* The cache file is JSON in the models folder (``weights-hashes.json``), written atomically; an unreadable
  or malformed cache is treated as empty, and a models folder that cannot be written only loses the saving.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lesionseg.io.atomic import write_json_atomic
from lesionseg.models.weights import file_hashes

CACHE_FILE = "weights-hashes.json"
# Files at least this large are hashed on a background thread when the cache does not know them yet.
BACKGROUND_HASH_BYTES = 8 << 20

_LOCK = threading.Lock()  # one writer at a time within this process (the list and the background thread)


def _stamp(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class HashCache:
    """Hashes of weights files keyed by resolved path, valid while size and mtime are unchanged."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / CACHE_FILE

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        entries = data.get("files") if isinstance(data, dict) else None
        return {k: v for k, v in (entries or {}).items() if isinstance(v, dict)}

    def lookup(self, path: str | Path) -> dict[str, str] | None:
        """The remembered hashes of ``path`` if it is unchanged since they were taken; None otherwise.

        Reads the file's metadata only, never its contents.
        """
        path = Path(path).resolve()
        try:
            stamp = _stamp(path)
        except OSError:
            return None
        entry = self._read().get(str(path))
        if not entry or any(entry.get(key) != value for key, value in stamp.items()):
            return None
        if not isinstance(entry.get("sha256"), str) or not isinstance(entry.get("md5"), str):
            return None
        return {"sha256": entry["sha256"], "md5": entry["md5"]}

    def hashes(self, path: str | Path) -> dict[str, str]:
        """The hashes of ``path``: remembered, or read from the file and remembered."""
        found = self.lookup(path)
        if found is not None:
            return found
        path = Path(path).resolve()
        before = _stamp(path)
        hashes = file_hashes(path)
        if _stamp(path) == before:  # a file written while it was read is not remembered
            self._remember(path, before, hashes)
        return hashes

    def _remember(self, path: Path, stamp: dict[str, int], hashes: dict[str, str]) -> None:
        with _LOCK:
            entries = self._read()  # merge: another listing or thread may have added entries meanwhile
            entries = {k: v for k, v in entries.items() if Path(k).exists()}
            entries[str(path)] = {**stamp, **hashes}
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_json_atomic(self.path, {"version": 1, "files": entries})
            except OSError:
                pass  # a read-only models folder: hashing simply happens every time


class BackgroundHasher:
    """Hashes files into a :class:`HashCache` on one daemon thread; ``pending`` while any are left."""

    def __init__(self, cache: HashCache, threshold_bytes: int = BACKGROUND_HASH_BYTES) -> None:
        self.cache = cache
        self.threshold_bytes = threshold_bytes  # smaller files are hashed where they are listed
        self._queue: list[Path] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.errors: dict[str, str] = {}

    @property
    def pending(self) -> bool:
        with self._lock:
            return bool(self._queue) or self._thread is not None

    def submit(self, paths: Iterable[str | Path]) -> None:
        with self._lock:
            for path in paths:
                path = Path(path).resolve()
                if path not in self._queue:
                    self._queue.append(path)
            if self._queue and self._thread is None:
                self._thread = threading.Thread(target=self._work, name="LesionSeg weights hashing", daemon=True)
                self._thread.start()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the queue is empty (tests and scripts); True when it is."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
        return not self.pending

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._thread = None  # under the lock, so submit() starts a new thread for later files
                    return
                path = self._queue[0]
            try:
                self.cache.hashes(path)
            except OSError as error:  # the file vanished: the next listing says so
                self.errors[str(path)] = str(error)
            with self._lock:
                self._queue.pop(0)


def is_large(path: str | Path, threshold: int = BACKGROUND_HASH_BYTES) -> bool:
    try:
        return os.stat(path).st_size >= threshold
    except OSError:
        return False
