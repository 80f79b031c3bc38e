"""Running a model on an image: preprocessing, sliding window, inversion to the input grid, post-processing."""

from lesionseg.inference.output import write_labelmap
from lesionseg.inference.pipeline import LoadedModel, load_model, segment_file, segment_image
from lesionseg.inference.progress import STAGE_WEIGHTS, Progress

__all__ = [
    "STAGE_WEIGHTS",
    "LoadedModel",
    "Progress",
    "load_model",
    "segment_file",
    "segment_image",
    "write_labelmap",
]
