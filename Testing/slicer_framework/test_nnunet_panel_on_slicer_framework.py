"""An imported CT + PET nnU-Net model in ProstateMetSeg's panel, on Slicer's own framework (per release).

The user chooses the model: the panel labels the volume selectors by the model's channels, shows the PET selector and
the nnU-Net options only now, fills the options from the model's sidecar, and waits for a PET before Segment can run.
Segment then runs the real model in a child process with both volumes and the options as shown, and the result
comes back as a new segmentation with the sidecar's label names.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest
from support import nnunet_models as nm

from lesionseg.image import Image
from lesionseg.mrml import volume_node_from_image

pytest.importorskip("nnunetv2")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from lesionseg.models.nnunet_import import import_nnunet_model

    root = tmp_path_factory.mktemp("panel-models")
    import_nnunet_model(nm.build_pet_ct_dataset(tmp_path_factory.mktemp("panel-build")).root, root, "petct-nnunet")
    return root


def test_a_pet_ct_nnunet_model_shows_its_channels_and_options_and_segments_from_the_panel(framework, models, tmp_path):
    scene = framework.slicer.mrmlScene
    ct_values, _ = nm.phantom(shape_zyx=(22, 38, 42), seed=3)
    ct = volume_node_from_image(scene, Image(ct_values, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3)), "Body CT")
    pet_values, spacing, origin = nm.pet_phantom((20.7, 15.2, 22.0), 9.0, origin=(-29.3, -24.1, -11.2))
    widget = framework.enter("ProstateMetSeg")
    ui, node, panel = widget.ui, widget._parameterNode, widget.segmentPanel
    widget.logic.modelsDir, widget.logic.pythonExecutable = models, sys.executable
    widget.logic.workRoot, widget.logic.childEnvironment = tmp_path, dict(os.environ)
    assert node.inputVolume is ct
    assert not ui.channelVolumeSelector.visible and not ui.nnunetCollapsibleButton.visible

    panel.refreshModels()
    ids = [entry.spec.id for entry in panel.entries]
    ui.modelComboBox.currentIndex = ids.index("petct-nnunet")

    assert node.modelId == "petct-nnunet"
    assert ui.inputVolumeLabel.text == "CT volume:" and ui.channelVolumeLabel.text == "PET volume:"
    assert ui.channelVolumeSelector.visible and ui.channelVolumeLabel.visible
    assert not ui.channelVolume3Selector.visible and not ui.channelVolume4Selector.visible  # two images, two selectors
    assert ui.nnunetCollapsibleButton.visible
    assert (ui.nnunetFoldsLineEdit.text, ui.nnunetCheckpointLineEdit.text) == ("", "checkpoint_final.pth")
    assert ui.nnunetMirroringComboBox.currentText == "auto" and ui.nnunetTileStepSizeSpinBox.value == 0.5
    assert not ui.segmentButton.enabled and "Select the PET volume" in ui.segmentButton.toolTip

    # The PET arrives after the model was chosen: the user picks it in the selector the panel showed.
    pet = volume_node_from_image(scene, Image(pet_values, spacing, origin, np.eye(3)), "Scan 2")
    ui.channelVolumeSelector.setCurrentNode(pet)
    assert node.channelVolume is pet
    assert ui.segmentButton.enabled, ui.segmentButton.toolTip
    ui.nnunetTileStepSizeSpinBox.value = 0.75
    ui.nnunetMirroringComboBox.currentIndex = ui.nnunetMirroringComboBox.findText("off")
    assert (node.nnunetTileStepSize, node.nnunetMirroring) == (0.75, "off")

    # Flip-TTA uncertainty is LesionSeg's own models': with an nnU-Net model Segment waits and says why.
    ui.uncertaintyCheckBox.setChecked(True)
    assert node.uncertainty is True
    assert not ui.segmentButton.enabled and "turn Uncertainty off" in ui.segmentButton.toolTip, ui.segmentButton.toolTip
    ui.uncertaintyCheckBox.setChecked(False)
    assert ui.segmentButton.enabled, ui.segmentButton.toolTip

    ui.segmentButton.click()
    run = panel.run
    assert run is not None and ui.segmentButton.text == "Cancel"
    argv = run.job.argv
    assert argv.count("--input") == 2 and "--no-tta" in argv
    assert argv[argv.index("--tile-step-size") + 1] == "0.75"
    deadline = time.monotonic() + 300
    while panel.run is not None and time.monotonic() < deadline:
        panel.onTimer()
        time.sleep(0.05)
    assert panel.run is None and run.failure() == "", run.failure()
    result = node.outputSegmentation
    assert result is not None and result.GetName() == "Body CT – ProstateMetSeg nnU-Net"
    assert result.GetSegmentation().GetNthSegment(0).GetName() == "lesion"
    assert ui.progressBar.value == 100 and ui.segmentButton.text == "Segment"

    # Back to a one-image model (none here): no model chosen, one unlabelled selector, no nnU-Net options.
    ui.modelComboBox.currentIndex = -1
    assert ui.inputVolumeLabel.text == "Input volume:"
    assert not ui.channelVolumeSelector.visible and not ui.nnunetCollapsibleButton.visible
