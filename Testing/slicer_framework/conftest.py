"""Fixtures for the tests that run LesionSeg's three modules on Slicer's own Python framework.

Each test runs once per Slicer release in ``assembled_slicer.TAGS``, on that release's framework and a fresh
real vtkMRMLScene (see ``assembled_slicer``); it is skipped, with the reason, where the released files are absent.
"""

from __future__ import annotations

import pytest
from assembled_slicer import TAGS, SlicerFramework, missing_reason

from lesionseg.image import Image
from lesionseg.mrml import ensure_segmentation_converters


@pytest.fixture(params=TAGS)
def framework(request):
    reason = missing_reason(request.param)
    if reason:
        pytest.skip(reason)
    assembled = SlicerFramework(request.param)
    ensure_segmentation_converters()
    try:
        yield assembled
    finally:
        assembled.close()


@pytest.fixture
def ct_image() -> Image:
    import numpy as np

    values = np.full((6, 10, 12), -50, np.int16)
    values[2:4, 3:7, 4:9] = 60
    return Image(values, (0.8, 0.8, 2.5), (120.5, 95.25, -310.0), np.diag([-1.0, -1.0, 1.0]))
