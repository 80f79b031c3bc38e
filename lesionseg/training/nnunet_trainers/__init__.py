"""nnU-Net trainer classes that LesionSeg provides (``lesionseg train --engine nnunet --trainer NAME``).

This folder is also a valid ``nnUNet_extTrainer`` path: nnU-Net's own lookup imports each module here by its bare name,
so the modules import nothing from ``lesionseg`` (only nnunetv2), and work the same either way.
"""

from __future__ import annotations

TRAINER_MODULE = "lesionseg.training.nnunet_trainers.quick_trainers"
TRAINERS = ("nnUNetTrainer_LesionSegTiny", "nnUNetTrainer_LesionSeg5Epochs")
