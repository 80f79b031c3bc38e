"""Listing the models remembers weight hashes by path, size and mtime, and hashes large new files on a thread.

What the cache trusts is written in lesionseg/models/hashcache.py; these tests pin both sides of it: an ordinary
change is hashed again, and a change that keeps size and mtime is, as documented, seen only by the run itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("safetensors")

from support.tiny_models import threshold_spec_dict, threshold_state, write_model_folder  # noqa: E402

from lesionseg.models import ModelRegistry  # noqa: E402
from lesionseg.models.hashcache import CACHE_FILE, BackgroundHasher, HashCache  # noqa: E402
from lesionseg.models.weights import WeightsError, verify_weights  # noqa: E402


def _entry(entries, model_id):
    return next(e for e in entries if e.spec.id == model_id)


def _flip_last_byte_keeping_size_and_mtime(path: Path) -> None:
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns


WEIGHTS = "own-spleen/model.safetensors"


@pytest.fixture
def models(tmp_path):
    spec = threshold_spec_dict("own-spleen")
    spec["weights"] = {"format": "safetensors", "path": "model.safetensors"}
    write_model_folder(tmp_path / "own-spleen", spec, threshold_state())
    return tmp_path


def test_listing_models_again_does_not_read_unchanged_weights(models):
    weights = models / WEIGHTS
    registry = ModelRegistry(models)
    assert _entry(registry.entries(cache=HashCache(models)), "own-spleen").verified is True
    record = json.loads((models / CACHE_FILE).read_text(encoding="utf-8"))["files"][str(weights.resolve())]
    assert record["size"] == weights.stat().st_size and record["mtime_ns"] == weights.stat().st_mtime_ns
    assert len(record["sha256"]) == 64

    # Alter the bytes but keep size and mtime: the second listing answers from the cache without reading the
    # file (it still says verified), which is the documented limit of the cache ...
    _flip_last_byte_keeping_size_and_mtime(weights)
    assert _entry(registry.entries(cache=HashCache(models)), "own-spleen").verified is True
    # ... while a listing without the cache, and the check that guards every run, read the file and refuse it.
    assert "sha256" in _entry(registry.entries(), "own-spleen").problem
    with pytest.raises(WeightsError, match="sha256"):
        verify_weights(registry.get("own-spleen"))


def test_changed_weights_are_hashed_again_when_their_mtime_changes(models):
    weights = models / WEIGHTS
    registry = ModelRegistry(models)
    assert _entry(registry.entries(cache=HashCache(models)), "own-spleen").verified is True
    _flip_last_byte_keeping_size_and_mtime(weights)
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000))
    entry = _entry(registry.entries(cache=HashCache(models)), "own-spleen")
    assert "sha256" in entry.problem and "download" in entry.problem


def test_a_damaged_cache_file_is_ignored_and_rewritten(models):
    (models / CACHE_FILE).write_text("{not json", encoding="utf-8")
    assert HashCache(models).lookup(models / WEIGHTS) is None
    assert _entry(ModelRegistry(models).entries(cache=HashCache(models)), "own-spleen").verified is True
    assert json.loads((models / CACHE_FILE).read_text(encoding="utf-8"))["version"] == 1


def test_large_new_weights_are_verified_in_the_background(models):
    hasher = BackgroundHasher(HashCache(models), threshold_bytes=1)  # every file counts as large here
    registry = ModelRegistry(models)
    first = _entry(registry.entries(hasher=hasher), "own-spleen")
    assert first.pending and first.verified is None and first.problem == ""
    assert hasher.wait(timeout_s=60)
    second = _entry(registry.entries(hasher=hasher), "own-spleen")
    assert not second.pending and second.verified is True
    # Altered weights that a new mtime gives away go back to the thread, which finds the mismatch.
    weights = models / WEIGHTS
    _flip_last_byte_keeping_size_and_mtime(weights)
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000))
    assert _entry(registry.entries(hasher=hasher), "own-spleen").pending
    assert hasher.wait(timeout_s=60)
    assert "sha256" in _entry(registry.entries(hasher=hasher), "own-spleen").problem
