"""The fixture every test on a real slicer-core scene starts from."""

from __future__ import annotations

import pytest

from lesionseg.mrml import ensure_segmentation_converters


@pytest.fixture
def scene():
    """A fresh, empty vtkMRMLScene from PyPI's slicer-core, with the segmentation conversion rules that the
    Slicer app registers at start-up (without them a segmentation cannot create empty segments or surfaces)."""
    slicer = pytest.importorskip("slicer")
    ensure_segmentation_converters()
    return slicer.vtkMRMLScene()
