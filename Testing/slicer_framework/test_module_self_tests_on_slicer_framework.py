"""The modules' own self-tests (``<Module>Test``), run as Slicer's SelfTests module runs them, per release.

Each scenario is a method of the module file's ScriptedLoadableModuleTest subclass; it runs here on Slicer's
framework (assembled_slicer) with Qt as stand-ins, a real scene, and ``slicer.app`` in testing mode. The
scenarios left out need what only the running app has; each is named below with what it needs.
"""

from __future__ import annotations

import unittest

import pytest

RUNS_HERE = [
    ("SpleenSeg", "test_choosing_a_ct_lists_the_models_and_readies_segment"),
    ("SpleenSeg", "test_comparing_with_a_corrected_segmentation_fills_the_metrics_table"),
    ("SpleenSeg", "test_oblique_ct_keeps_every_voxel_in_place_through_the_bridge"),
    ("ProstateMetSeg", "test_choosing_a_ct_fills_the_inputs_and_the_actions_wait_for_a_segmentation"),
    ("ProstateMetSeg", "test_exporting_a_volume_without_dicom_origin_offers_a_seg_nrrd"),
    ("ProstateMetSeg", "test_flipped_lesion_labelmap_keeps_its_voxels_and_volume_through_the_bridge"),
    ("ProstateMetSeg", "test_lesion_table_lists_lesions_over_the_minimum_and_a_click_centres_the_views"),
    ("LesionSegTraining", "test_case_segmentation_round_trips_through_the_bridge"),
    ("LesionSegTraining", "test_choosing_a_case_fills_the_inputs_and_the_actions_say_what_they_need"),
    ("LesionSegTraining", "test_saving_and_removing_cases_keeps_versions_and_provenance"),
]
SLICERRT_SCENARIO = "test_exporting_rtstruct_of_a_ct_without_dicom_series_through_slicerrt_keeps_the_hierarchy_patient"
NEEDS_THE_APP = {
    ("SpleenSeg", "test_exporting_a_volume_without_dicom_origin_offers_a_seg_nrrd"): "loadSegmentation: the IO manager",
    ("SpleenSeg", "test_segmenting_a_small_volume_adds_a_new_named_node_on_the_input_grid"): "a PythonSlicer child",
    ("ProstateMetSeg", "test_segmenting_metastases_adds_a_new_node_and_lists_its_lesions"): "a PythonSlicer child",
    ("ProstateMetSeg", "test_exporting_a_ct_loaded_from_dicom_writes_on_its_series_and_keeps_the_patient"): (
        "a TemporaryDICOMDatabase: CTK's SQLite database under the app's settings"
    ),
    ("ProstateMetSeg", SLICERRT_SCENARIO): "SlicerRT (it skips, see below)",
    ("LesionSegTraining", "test_training_in_the_background_plots_the_curves_and_registers_the_model"): (
        "a PythonSlicer child"
    ),
}


def _self_test(framework, module: str):
    test = getattr(framework.load_module(module), f"{module}Test")()
    test.messageDelay = 0  # as ScriptedLoadableModule.runTest(msec=0): delayDisplay only processes events
    test.setUp()
    return test


@pytest.mark.parametrize(("module", "scenario"), RUNS_HERE, ids=[f"{m}.{s}" for m, s in RUNS_HERE])
def test_module_self_test_scenario_passes_on_slicer_framework(framework, module, scenario):
    getattr(_self_test(framework, module), scenario)()


def test_every_self_test_scenario_is_run_here_or_named_with_what_it_needs(framework):
    for module in ("SpleenSeg", "ProstateMetSeg", "LesionSegTraining"):
        test = _self_test(framework, module)
        scenarios = {(module, name) for name in test.moduleTestNames if name.startswith("test_")}
        assert scenarios == {s for s in RUNS_HERE + list(NEEDS_THE_APP) if s[0] == module}, module


def test_the_slicerrt_scenario_skips_with_its_reason_when_slicerrt_is_absent(framework):
    test = _self_test(framework, "ProstateMetSeg")
    with pytest.raises(unittest.SkipTest, match="SlicerRT"):
        getattr(test, SLICERRT_SCENARIO)()
