"""MONAI training on a LesionSeg dataset, written out as a registry model folder."""

from lesionseg.training.config import DEFAULTS, load_config, presets
from lesionseg.training.loop import TrainResult, train

__all__ = ["DEFAULTS", "TrainResult", "load_config", "presets", "train"]
