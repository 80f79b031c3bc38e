"""LesionSeg engine: AI segmentation of CT, with no Slicer and no Qt (see lesionseg.image for geometry)."""

__version__ = "0.1.0"

from lesionseg.image import Image  # noqa: E402

__all__ = ["Image", "__version__"]
