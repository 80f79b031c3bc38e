"""The fixture every test on a real slicer-core scene starts from."""

from __future__ import annotations

import tempfile

import pytest

from lesionseg.mrml import ensure_segmentation_converters


@pytest.fixture
def scene():
    """A fresh, empty vtkMRMLScene from PyPI's slicer-core, with the segmentation conversion rules that the
    Slicer app registers at start-up (without them a segmentation cannot create empty segments or surfaces)."""
    slicer = pytest.importorskip("slicer")
    ensure_segmentation_converters()
    return slicer.vtkMRMLScene()


@pytest.fixture(autouse=True)
def _runs_keep_their_work_under_pytests_temp(tmp_path_factory, monkeypatch):
    """The module runs make their work folders with ``tempfile`` (LesionSegRank-*, LesionSegTraining-*) and delete
    them when the panel is done with the run; a test that stops before that would leave them in the machine's
    temporary folder. Here they go under pytest's own, which pytest prunes."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("runs")))
