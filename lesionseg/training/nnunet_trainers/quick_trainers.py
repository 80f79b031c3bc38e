"""Short nnU-Net trainers for tests and quick tries on a CPU.

nnU-Net's own short variants (``nnUNetTrainer_1epoch``, ``_5epochs``) still run 250 iterations an epoch, about
15 minutes on 2 cores; these run a handful. Imports only nnunetv2: nnU-Net's ``nnUNet_extTrainer`` lookup imports this
file as a top-level module.
"""

from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class ShortTrainer(nnUNetTrainer):
    """nnUNetTrainer with the epoch and iteration counts of its subclass's class attributes."""

    epochs, iterations, validation_iterations = 1000, 250, 50  # nnUNetTrainer's own

    def __init__(
        self, plans: dict, configuration: str, fold: int, dataset_json: dict, device: torch.device = torch.device("cpu")
    ) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.epochs
        self.num_iterations_per_epoch = self.iterations
        self.num_val_iterations_per_epoch = self.validation_iterations
        self.save_every = 1  # checkpoint_latest after every epoch, so a cancelled run resumes where it stopped


class nnUNetTrainer_LesionSegTiny(ShortTrainer):  # noqa: N801 (nnU-Net's trainer naming)
    """One epoch of 2 training and 1 validation iterations: proves the pipeline, learns nothing useful."""

    epochs, iterations, validation_iterations = 1, 2, 1


class nnUNetTrainer_LesionSeg5Epochs(ShortTrainer):  # noqa: N801
    """Five epochs of 10 iterations: a quick look at whether a dataset trains at all."""

    epochs, iterations, validation_iterations = 5, 10, 2
