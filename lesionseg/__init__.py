"""LesionSeg engine: AI segmentation of CT, with no Slicer and no Qt (see lesionseg.image for geometry)."""

__version__ = "0.1.0"

__all__ = ["Image", "__version__"]


def __getattr__(name: str):
    # Imported on first use: ``lesionseg --help`` and the parser of one command need no numpy.
    if name == "Image":
        from lesionseg.image import Image

        return Image
    raise AttributeError(f"module 'lesionseg' has no attribute {name!r}")
