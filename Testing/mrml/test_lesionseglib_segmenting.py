"""LesionSegLib's Qt-free segmentation run on a real slicer-core scene: input checks, the model list, and
cancelling a real background job. (The full run is in test_lesionseglib_background.py.)"""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
from support.processes import python_without
from support.tiny_models import bright_ct

from lesionseg.image import Image
from lesionseg.jobs import JobState
from lesionseg.mrml import (
    labelmap_from_segmentation_node,
    segmentation_node_from_labelmap,
    volume_node_from_image,
)

slicer = pytest.importorskip("slicer")
pytest.importorskip("torch")

from LesionSegLib import segmenting  # noqa: E402
from LesionSegLib.results import SegmentationResultsLogic  # noqa: E402
from LesionSegLib.selftest import write_threshold_model  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_threshold_model(root, "tiny-spleen", "spleen")
    write_threshold_model(root, "tiny-mets", "bone metastasis", threshold_hu=300)
    return root


def wait(run, seconds=180):
    deadline = time.monotonic() + seconds
    status_log = []
    while not run.finished and time.monotonic() < deadline:
        status_log += run.poll().log
        time.sleep(0.1)
    status_log += run.poll().log
    return status_log


def test_bad_inputs_are_refused_with_what_to_choose_instead(scene):
    with pytest.raises(ValueError, match="Select an input volume"):
        segmenting.check_input_volume(None)
    ct = bright_ct()
    labelmap = volume_node_from_image(scene, ct.with_array((ct.array > 100).astype(np.uint8)), "L", labelmap=True)
    with pytest.raises(ValueError, match="is a labelmap, not a CT"):
        segmenting.check_input_volume(labelmap)
    flat = volume_node_from_image(scene, Image(np.zeros((1, 8, 8), np.int16), (1, 1, 1), (0, 0, 0), np.eye(3)), "X")
    with pytest.raises(ValueError, match="is a 2D image"):
        segmenting.check_input_volume(flat)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Nothing")
    with pytest.raises(ValueError, match="holds no image data"):
        segmenting.check_input_volume(empty)
    colour = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "Photo")
    import vtk

    rgb = vtk.vtkImageData()
    rgb.SetDimensions(4, 4, 4)
    rgb.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    colour.SetAndObserveImageData(rgb)
    assert "3 components per voxel" in segmenting.input_volume_problem(colour)
    with pytest.raises(ValueError, match="no model 'nope'"):
        segmenting.SegmentingLogic().modelEntry("nope")
    assert segmenting.check_input_volume(volume_node_from_image(scene, ct, "CT")).same_grid(ct)


class ModuleLogic(segmenting.SegmentingLogic, SegmentationResultsLogic):
    """The two mixins the segmentation modules' logics combine, without the app's ScriptedLoadableModuleLogic."""

    moduleName = "SpleenSeg"
    segmentAction = "Segment the spleen in the input volume."


def test_each_action_button_says_why_it_waits_and_what_it_will_do(scene):
    # The modules' widgets copy these (enabled, tooltip) pairs onto their buttons on every parameter change.
    # The parameter node is the module's wrapper in Slicer; here a plain object with the same fields.
    logic = ModuleLogic()
    ct = volume_node_from_image(scene, bright_ct(), "CT")
    labels = bright_ct().with_array((bright_ct().array > 100).astype(np.uint8))
    ai = segmentation_node_from_labelmap(scene, labels, "AI", {1: "Spleen"}, ct)
    corrected = segmentation_node_from_labelmap(scene, labels, "Corrected", {1: "Spleen"}, ct)
    node = SimpleNamespace(
        inputVolume=None, outputSegmentation=None, referenceSegmentation=None, exportFormat="RTSTRUCT"
    )
    waits = {
        "segment": logic.segmentReadiness(node),
        "compare": logic.compareReadiness(node),
        "export": logic.exportReadiness(node),
        "lesions": logic.lesionTableReadiness(node),
    }
    assert all(not enabled and reason.startswith("Select") for enabled, reason in waits.values()), waits
    assert logic.segmentReadiness(None) == (False, "Select an input volume.")

    node.inputVolume = volume_node_from_image(scene, labels, "Mask", labelmap=True)
    enabled, reason = logic.segmentReadiness(node)
    assert not enabled and "'Mask' is a labelmap" in reason
    node.inputVolume = ct
    assert logic.segmentReadiness(node) == (True, "Segment the spleen in the input volume.")

    node.outputSegmentation = node.referenceSegmentation = ai
    enabled, reason = logic.compareReadiness(node)
    assert not enabled and "different segmentation" in reason
    node.referenceSegmentation = corrected
    assert logic.compareReadiness(node)[0]
    assert logic.exportReadiness(node) == (True, "Export the output segmentation as RTSTRUCT.")
    assert logic.lesionTableReadiness(node)[0]


def test_each_module_lists_its_models_with_version_and_weights_state(models, tmp_path):
    organs = segmenting.model_entries(models, lesion=False)
    lesions = segmenting.model_entries(models, lesion=True)
    assert "tiny-spleen" in [e.spec.id for e in organs] and "tiny-mets" not in [e.spec.id for e in organs]
    # the shipped demo models are listed beside the user's, each under its own module
    assert [e.spec.id for e in lesions] == ["tiny-mets", "demo-lesion"]  # models for patients first
    assert [e.spec.id for e in organs] == ["spleen_ct_segmentation", "tiny-spleen", "demo-spleen"]
    line = segmenting.describe_entry(next(e for e in organs if e.spec.id == "tiny-spleen"))
    assert line == "tiny-spleen 0.0.1-selftest — weights verified"
    builtin = next(e for e in organs if e.spec.id == "spleen_ct_segmentation")
    assert "weights not downloaded" in segmenting.describe_entry(builtin)
    assert "press Download" in segmenting.weights_problem(builtin)

    broken = tmp_path / "broken"
    write_threshold_model(broken, "tiny-spleen", "spleen")
    weights = broken / "tiny-spleen" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7] + b"garbage")
    entry = next(e for e in segmenting.model_entries(broken) if e.spec.id == "tiny-spleen")
    assert "weights corrupt" in segmenting.describe_entry(entry)
    assert "fail their check" in segmenting.weights_problem(entry)


@pytest.mark.slow
def test_a_cancelled_run_adds_nothing_and_leaves_no_files(scene, models, tmp_path):
    volume = volume_node_from_image(scene, bright_ct(), "CT")
    entry = next(e for e in segmenting.model_entries(models, lesion=True) if e.spec.id == "tiny-mets")
    run = segmenting.SegmentationRun(volume, entry, "cpu", "ProstateMetSeg", sys.executable, models, tmp_path)
    run.start()
    run.cancel()
    run.poll()
    assert run.state is JobState.CANCELLED and run.status.stage == "cancelled"
    assert "nothing was added" in run.failure()
    with pytest.raises(RuntimeError, match="cancelled"):
        run.load_result(scene)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert not run.work_dir.exists()


def test_a_spec_with_lesion_labels_decides_the_module_whatever_its_label_names(tmp_path):
    import json

    for model_id, name, lesion_labels in (("named-organ", "liver", [1]), ("named-lesion", "metastasis", [])):
        folder = write_threshold_model(tmp_path, model_id, name)
        spec = json.loads((folder / "spec.json").read_text())
        spec["lesion_labels"] = lesion_labels
        (folder / "spec.json").write_text(json.dumps(spec))
    write_threshold_model(tmp_path, "words-only", "nodal metastasis")  # no lesion_labels: its label names decide
    lesions = {e.spec.id for e in segmenting.model_entries(tmp_path, lesion=True)}
    organs = {e.spec.id for e in segmenting.model_entries(tmp_path, lesion=False)}
    assert {"named-organ", "words-only"} <= lesions and "named-lesion" not in lesions
    assert "named-lesion" in organs and not {"named-organ", "words-only"} & organs


def test_run_options_come_from_the_parameter_node_and_zero_threshold_means_the_models_own():
    logic = segmenting.SegmentingLogic()
    assert logic.segmentOptions(SimpleNamespace(cropBody=True, lesionThreshold=0.3)) == {
        "cropBody": True,
        "threshold": 0.3,
        "uncertainty": "none",
    }
    assert logic.segmentOptions(SimpleNamespace(cropBody=False, lesionThreshold=0.0))["threshold"] is None
    # SpleenSeg's parameter node has no threshold field
    assert logic.segmentOptions(SimpleNamespace(cropBody=False)) == {
        "cropBody": False,
        "threshold": None,
        "uncertainty": "none",
    }


@pytest.mark.slow
def test_threshold_and_body_crop_reach_the_background_segmentation(scene, tmp_path):
    """A soft threshold model (lesion probability 0.3 at 215 HU, 0.5 at 300 HU) run from the logic, as Segment does."""
    models = tmp_path / "models"
    write_threshold_model(models, "soft-mets", "bone metastasis", threshold_hu=300.0, steepness=20.0)
    ct = bright_ct()
    volume = volume_node_from_image(scene, ct, "CT")
    logic = segmenting.SegmentingLogic()
    logic.moduleName, logic.lesionModels, logic.modelsDir = "ProstateMetSeg", True, models
    logic.pythonExecutable, logic.workRoot = sys.executable, tmp_path
    entry = logic.modelEntry("soft-mets")
    with pytest.raises(ValueError, match="between 0 and 1"):
        logic.startSegmentation(volume, entry, "cpu", threshold=1.5)
    assert not list(tmp_path.glob("LesionSeg-*")), "a refused run must not write its input"

    results = {}
    for threshold in (None, 0.3):
        run = logic.startSegmentation(volume, entry, "cpu", cropBody=threshold is not None, threshold=threshold)
        log = wait(run)
        assert run.state is JobState.SUCCEEDED, run.failure()
        node = run.load_result(scene)
        labels, _ = labelmap_from_segmentation_node(node, volume, {"bone metastasis": 1})
        results[threshold] = (labels.array, log)
        # the cut is in the node's name and attributes, so results at two thresholds stay apart
        suffix = "" if threshold is None else " (threshold 0.30)"
        assert node.GetName() == f"CT – ProstateMetSeg {entry.spec.version}{suffix}"
        assert node.GetAttribute(segmenting.THRESHOLD_ATTRIBUTE) == ("" if threshold is None else "0.3")
    np.testing.assert_array_equal(results[None][0], (ct.array > 300).astype(np.uint8))  # the argmax: 500 HU only
    np.testing.assert_array_equal(results[0.3][0], (ct.array > 215).astype(np.uint8))  # 250 HU joins at 0.3
    assert any("body crop" in line for line in results[0.3][1]), results[0.3][1]
    assert not any("body crop" in line for line in results[None][1])


def test_a_slicer_without_jsonschema_lists_no_models_and_offers_the_install(tmp_path):
    """Slicer 5.10 does not bundle jsonschema: the panel must open, say what is missing, and let Segment install."""
    script = (
        "from LesionSegLib import segmenting\n"
        "logic = segmenting.SegmentingLogic()\n"
        "logic.moduleName, logic.lesionModels = 'ProstateMetSeg', True\n"
        f"logic.modelsDir = {str(tmp_path)!r}\n"
        "entries, problem = logic.listModels()\n"
        "print(len(entries)); print(problem)\n"
    )
    count, problem = python_without(("jsonschema",), script).strip().splitlines()  # absent, as in a fresh Slicer
    assert count == "0"
    assert "jsonschema>=4.0" in problem and "click Segment to install" in problem
    # with the package present the same call lists the shipped demo lesion model and says nothing
    logic = segmenting.SegmentingLogic()
    logic.moduleName, logic.lesionModels, logic.modelsDir = "ProstateMetSeg", True, tmp_path
    entries, problem = logic.listModels()
    assert "demo-lesion" in [e.spec.id for e in entries] and problem == ""


def test_opening_a_panel_preselects_the_ct_not_a_labelmap(scene):
    ct = bright_ct()
    labels = ct.with_array((ct.array > 100).astype(np.uint8))
    # A labelmap loaded first (e.g. a reference drawn earlier), then the CT, then another labelmap.
    first_labelmap = volume_node_from_image(scene, labels, "reference labels", labelmap=True)
    assert segmenting.default_input_volume(scene) is None  # the selector could not show it
    volume = volume_node_from_image(scene, ct, "CT")
    volume_node_from_image(scene, labels, "later labels", labelmap=True)
    assert first_labelmap.IsA("vtkMRMLScalarVolumeNode")  # why GetFirstNodeByClass returned it
    assert scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode") is first_labelmap
    assert segmenting.default_input_volume(scene) is volume

    # A hidden volume and a 2D image are passed over when a usable CT exists.
    flat = volume_node_from_image(scene, Image(np.zeros((1, 9, 9), np.int16), (1, 1, 1), (0, 0, 0), np.eye(3)), "2D")
    scene.RemoveNode(volume)
    assert segmenting.default_input_volume(scene) is flat
    hidden = volume_node_from_image(scene, ct, "hidden CT")
    hidden.SetHideFromEditors(True)
    assert segmenting.default_input_volume(scene) is flat
    shown = volume_node_from_image(scene, ct, "CT again")
    assert segmenting.default_input_volume(scene) is shown


def test_a_demo_model_is_never_preselected_and_shows_its_intended_use_before_segment(tmp_path):
    organs = segmenting.model_entries(tmp_path, lesion=False)
    lesions = segmenting.model_entries(tmp_path, lesion=True)
    assert [e.spec.id for e in organs] == ["spleen_ct_segmentation", "demo-spleen"]
    assert [e.spec.id for e in lesions] == ["demo-lesion"]
    # An empty choice falls on the first model for patients; with only a demo model, on nothing.
    assert segmenting.preselected_model_id(organs) == "spleen_ct_segmentation"
    assert segmenting.preselected_model_id(lesions) == ""
    assert segmenting.preselected_model_id(lesions, "a model since removed") == ""
    # A demo model the user chose stays chosen.
    assert segmenting.preselected_model_id(lesions, "demo-lesion") == "demo-lesion"
    assert segmenting.preselected_model_id(organs, "demo-spleen") == "demo-spleen"

    for entry in (*lesions, organs[1]):
        assert entry.spec.demo
        summary = segmenting.model_summary(entry)
        assert "Intended use: Synthetic phantoms only, not for clinical use" in summary
        assert "Licence: Apache-2.0" in summary
        assert segmenting.describe_entry(entry).endswith("(demo: synthetic phantoms only)")
    monai = organs[0]
    assert not monai.spec.demo and not segmenting.describe_entry(monai).endswith(")")
    summary = segmenting.model_summary(monai).splitlines()
    assert summary[0].startswith("spleen_ct_segmentation 0.5.9: MONAI Model Zoo")
    assert summary[1].startswith("Intended use: ") and "not to be used for diagnostic purposes" in summary[1]
    assert summary[2].startswith("Licence: Apache-2.0") and "CC BY-SA 4.0" in summary[2]

    # A user's spec that says nothing about them says so.
    write_threshold_model(tmp_path, "own-model", "spleen")
    own = next(e for e in segmenting.model_entries(tmp_path) if e.spec.id == "own-model")
    assert "Intended use: not stated in its spec" in segmenting.model_summary(own)
    assert segmenting.preselected_model_id(segmenting.model_entries(tmp_path)) == "own-model"


def test_opening_a_panel_lists_new_large_weights_as_verifying_until_the_thread_has_hashed_them(tmp_path):
    write_threshold_model(tmp_path, "own-spleen", "spleen")

    class Logic(segmenting.SegmentingLogic):
        moduleName = "SpleenSeg"

    logic = Logic()
    logic.modelsDir = tmp_path
    logic.weightsHasher().threshold_bytes = 1  # the tiny weights count as large here
    entries, problem = logic.listModels()
    own = next(e for e in entries if e.spec.id == "own-spleen")
    assert problem == "" and own.pending
    assert segmenting.describe_entry(own) == "own-spleen 0.0.1-selftest — verifying weights…"
    assert "being verified" in segmenting.weights_problem(own)
    # A script asking for the model waits for the hashing instead of failing.
    ready = logic.modelEntry("own-spleen")
    assert not logic.verifyingModels()
    assert ready.verified is True and segmenting.weights_problem(ready) == ""
    assert segmenting.describe_entry(ready) == "own-spleen 0.0.1-selftest — weights verified"
    # The next listing answers from the cache the thread filled: nothing left to hash.
    entries, _problem = logic.listModels()
    assert not any(e.pending for e in entries) and not logic.verifyingModels()
