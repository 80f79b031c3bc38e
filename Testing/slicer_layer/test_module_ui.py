"""The modules' Qt Designer files against the code that loads them and the parameter nodes they bind to.

The pairs of widget class and field type below are the ones Slicer's parameterNodeWrapper can connect
(Base/Python/slicer/parameterNodeWrapper/guiConnectors.py); any other pair makes ``connectGui`` raise
when the module opens.
"""

from __future__ import annotations

import ast

import pytest
from support.slicer_modules import (
    MODULES,
    Field,
    module_source,
    parameter_node_fields,
    parse_module,
    parse_ui,
    ui_attribute_names,
    ui_object_names,
    ui_root,
    ui_scene_connections,
    ui_sections,
    ui_widgets,
    widget_classes,
    widget_method,
)


def module_source_text(module: str) -> str:
    return module_source(module).read_text(encoding="utf-8")


_PATH_TYPES = {"pathlib.Path", "Path", "pathlib.PurePath", "pathlib.PosixPath", "pathlib.WindowsPath"}


def _connectable(widget_class: str, field: Field) -> str | None:
    """Why Slicer cannot bind ``widget_class`` to ``field``, or None when it can."""
    base = field.base
    if widget_class == "qMRMLNodeComboBox":
        return None if base.startswith("vtkMRML") else "a node selector needs a vtkMRML...Node field"
    if widget_class in ("QComboBox", "ctkComboBox"):
        if base in ("str", "int", "float", "bool") and "Choice" not in field.validators:
            return "a combo box bound to a str/int/float/bool field needs Annotated[..., Choice([...])]"
        return None
    if widget_class in ("QSpinBox", "QSlider"):
        if base != "int":
            return "QSpinBox/QSlider bind int fields only"
        if widget_class == "QSlider" and "WithinRange" not in field.validators:
            return "a QSlider needs a WithinRange bound"
        return None
    if widget_class in ("QDoubleSpinBox", "ctkSliderWidget", "ctkDoubleSpinBox", "qMRMLSliderWidget", "qMRMLSpinBox"):
        return None if base in ("float", "int") else "a numeric widget needs an int or float field"
    if widget_class in ("QCheckBox", "ctkCheckBox", "QPushButton", "ctkCheckablePushButton"):
        return None if base == "bool" else "a check box or checkable button needs a bool field"
    if widget_class == "QLineEdit":
        return None if base == "str" else "a QLineEdit needs a str field"
    if widget_class in ("ctkPathLineEdit", "ctkDirectoryButton"):
        return None if base in _PATH_TYPES else "a path widget needs a pathlib.Path field"
    return f"parameterNodeWrapper has no connector for {widget_class}"


@pytest.mark.parametrize("module", MODULES)
def test_every_widget_the_code_uses_is_in_the_ui_file(module):
    missing = ui_attribute_names(module) - ui_object_names(module)
    assert not missing, f"{module}.py uses self.ui.{sorted(missing)} but {module}.ui has no such objectName"


@pytest.mark.parametrize("module", MODULES)
def test_ui_root_is_a_mrml_widget_named_after_the_module(module):
    root = ui_root(module)
    assert root.cls == "qMRMLWidget"
    assert root.name == module


@pytest.mark.parametrize("module", MODULES)
def test_ui_is_made_of_collapsible_sections_starting_with_inputs(module):
    sections = ui_sections(module)
    assert sections, f"{module}.ui has no sections"
    assert all(s.cls == "ctkCollapsibleButton" for s in sections), [(s.cls, s.name) for s in sections]
    assert sections[0].string("text") == "Inputs"


@pytest.mark.parametrize("module", MODULES)
def test_every_node_selector_is_bound_to_a_parameter_and_gets_the_scene(module):
    fields = parameter_node_fields(module)
    selectors = [w for w in ui_widgets(module) if w.cls == "qMRMLNodeComboBox"]
    assert selectors
    receivers = ui_scene_connections(module)
    for selector in selectors:
        parameter = selector.string("SlicerParameterName")
        assert parameter in fields, f"{selector.name}: SlicerParameterName {parameter!r} is not a parameter node field"
        assert selector.string_list("nodeTypes") == [fields[parameter].base], selector.name
        for flag in ("noneEnabled", "addEnabled", "removeEnabled"):
            assert selector.boolean(flag) is not None, f"{selector.name}: set {flag} explicitly"
        assert selector.name in receivers, f"{selector.name} is not connected to the root's mrmlSceneChanged"


@pytest.mark.parametrize("module", MODULES)
def test_every_bound_widget_can_be_connected_by_parameter_node_wrapper(module):
    fields = parameter_node_fields(module)
    for widget in ui_widgets(module):
        parameter = widget.string("SlicerParameterName")
        if parameter is None:
            continue
        assert parameter in fields, f"{widget.name}: SlicerParameterName {parameter!r} is not a parameter node field"
        problem = _connectable(widget.cls, fields[parameter])
        assert problem is None, f"{module}.ui {widget.name} ({widget.cls}) ↔ {parameter}: {problem}"


@pytest.mark.parametrize("module", MODULES)
def test_parameter_node_node_types_are_real_mrml_classes(module):
    slicer = pytest.importorskip("slicer")
    for field in parameter_node_fields(module).values():
        if field.base.startswith("vtkMRML"):
            cls = getattr(slicer, field.base, None)
            assert cls is not None, f"{module}: slicer has no class {field.base}"
            assert issubclass(cls, slicer.vtkMRMLNode), f"{field.base} is not an MRML node class"


@pytest.mark.parametrize("module", ["SpleenSeg", "ProstateMetSeg"])
def test_segmentation_modules_offer_device_choice_progress_and_a_read_only_log(module):
    widgets = {w.name: w for w in ui_widgets(module)}
    fields = parameter_node_fields(module)
    device = widgets["deviceComboBox"]
    assert device.string("SlicerParameterName") == "device"
    assert fields["device"].validators == ("Choice",)
    assert widgets["modelComboBox"].cls == "QComboBox" and widgets["modelComboBox"].boolean("enabled") is False
    assert widgets["progressBar"].cls == "QProgressBar"
    assert widgets["logTextEdit"].cls == "QPlainTextEdit" and widgets["logTextEdit"].boolean("readOnly") is True


def test_prostate_minimum_lesion_volume_defaults_to_100_mm3():
    spin = {w.name: w for w in ui_widgets("ProstateMetSeg")}["minLesionVolumeSpinBox"]
    assert spin.cls == "QSpinBox"
    assert spin.prop("value").findtext("number") == "100"
    assert spin.string("suffix").strip() == "mm³"
    assert parameter_node_fields("ProstateMetSeg")["minLesionVolumeMm3"].validators == ("WithinRange",)


def test_prostate_detection_threshold_starts_at_the_models_own_setting():
    """0 is "model default" (no --threshold); the box stops below 1, where nothing would be foreground."""
    spin = {w.name: w for w in ui_widgets("ProstateMetSeg")}["lesionThresholdSpinBox"]
    assert spin.cls == "QDoubleSpinBox" and spin.string("SlicerParameterName") == "lesionThreshold"
    assert spin.string("specialValueText") == "model default"
    bounds = [float(spin.prop(name).findtext("double")) for name in ("minimum", "value", "maximum")]
    assert bounds == [0.0, 0.0, 0.95]
    source = module_source_text("ProstateMetSeg")
    assert "lesionThreshold: Annotated[float, WithinRange(0.0, 0.95)] = 0.0" in source


@pytest.mark.parametrize("module", ["SpleenSeg", "ProstateMetSeg"])
def test_segmentation_modules_offer_the_body_crop(module):
    box = {w.name: w for w in ui_widgets(module)}["cropBodyCheckBox"]
    assert box.cls == "QCheckBox" and box.string("SlicerParameterName") == "cropBody"
    assert parameter_node_fields(module)["cropBody"].base == "bool"


def test_training_dataset_folder_is_a_directory_path_edit():
    widgets = {w.name: w for w in ui_widgets("LesionSegTraining")}
    folder = widgets["datasetFolderPathLineEdit"]
    assert folder.cls == "ctkPathLineEdit"
    filters = folder.prop("filters").findtext("set").split("|")
    assert "ctkPathLineEdit::Dirs" in filters and "ctkPathLineEdit::Files" not in filters
    # Filled from the engine's presets when the module opens; bound by hand (the list is not a fixed Choice).
    assert (
        widgets["configPresetComboBox"].cls == "QComboBox"
        and widgets["configPresetComboBox"].string("SlicerParameterName") is None
    )


def test_training_panel_offers_the_key_parameters_progress_plot_table_and_log():
    widgets = {w.name: w for w in ui_widgets("LesionSegTraining")}
    fields = parameter_node_fields("LesionSegTraining")
    sections = ["Inputs", "Dataset", "Which case next", "Training"]
    assert [s.string("text") for s in ui_sections("LesionSegTraining")] == sections
    for name, parameter in (
        ("annotatorLineEdit", "annotator"),
        ("modelNameLineEdit", "modelName"),
        ("epochsSpinBox", "epochs"),
        ("learningRateSpinBox", "learningRate"),
        ("deviceComboBox", "device"),
    ):
        assert widgets[name].string("SlicerParameterName") == parameter and parameter in fields
    assert widgets["casesTableView"].cls == widgets["historyTableView"].cls == "qMRMLTableView"
    assert widgets["caseLabelMappingTableWidget"].cls == "QTableWidget"
    assert widgets["progressBar"].cls == "QProgressBar" and widgets["logTextEdit"].boolean("readOnly") is True
    assert fields["historyChart"].base == "vtkMRMLPlotChartNode" and fields["historyTable"].base == "vtkMRMLTableNode"
    receivers = ui_scene_connections("LesionSegTraining")
    assert {"casesTableView", "historyTableView", "caseVolumeSelector", "caseSegmentationSelector"} <= receivers
    # Which case next: a folder, a model and a method, Rank and Load, progress and the ranking table.
    assert widgets["rankMethodComboBox"].string("SlicerParameterName") == "rankMethod" and "rankMethod" in fields
    assert {"rankFolder", "rankModelId", "rankingTable"} <= set(fields) and "rankingTableView" in receivers
    assert widgets["rankButton"].cls == widgets["loadRankedCaseButton"].cls == "QPushButton"
    assert widgets["rankProgressBar"].cls == "QProgressBar" and widgets["rankingTableView"].cls == "qMRMLTableView"


@pytest.mark.parametrize("module", MODULES)
def test_widget_loads_its_own_ui_file(module):
    # Slicer's ScriptedLoadableModuleWidget sets moduleName to the class name less "Widget", so the shared
    # setup in LesionSegLib loads UI/<module>.ui for each module.
    assert [c.name for c in widget_classes(module)][0] == f"{module}Widget"
    _cls, setup = widget_method(module, "setup")
    source = ast.unparse(setup)
    assert "slicer.util.loadUI(self.resourcePath(f'UI/{self.moduleName}.ui'))" in source
    assert "uiWidget.setMRMLScene(slicer.mrmlScene)" in source
    _cls, bind = widget_method(module, "setParameterNode")
    assert "self._parameterNode.connectGui(self.ui)" in ast.unparse(bind)


@pytest.mark.parametrize("module", ["SpleenSeg", "ProstateMetSeg"])
def test_comparison_and_export_sections_offer_what_the_shared_panels_need(module):
    widgets = {w.name: w for w in ui_widgets(module)}
    sections = [s.name for s in ui_sections(module)]
    assert {"evaluationCollapsibleButton", "exportCollapsibleButton"} <= set(sections)
    assert widgets["segmentMappingTableWidget"].cls == "QTableWidget"
    receivers = ui_scene_connections(module)
    tables = [w for w in ui_widgets(module) if w.cls == "qMRMLTableView"]
    assert "comparisonTableView" in [t.name for t in tables]
    for table in tables:
        assert table.name in receivers, f"{table.name} is not connected to the root's mrmlSceneChanged"
    export_format = widgets["exportFormatComboBox"]
    assert export_format.string("SlicerParameterName") == "exportFormat"
    items = [item.find("property/string").text for item in export_format.element.findall("item")]
    assert items == ["RTSTRUCT", "DICOM SEG", "NRRD"]
    source = module_source_text(module)
    assert "Choice(list(LesionSegLib.export.FORMATS))" in source
    destinations = [
        i.find("property/string").text for i in widgets["exportDestinationComboBox"].element.findall("item")
    ]
    assert destinations == ["DICOM database", "Folder"]
    folder = widgets["exportFolderPathLineEdit"]
    assert folder.cls == "ctkPathLineEdit" and "ctkPathLineEdit::Dirs" in folder.prop("filters").findtext("set")
    customs = {c.findtext("class"): c.findtext("extends") for c in parse_ui(module).iter("customwidget")}
    assert customs.get("qMRMLTableView") == "QTableView" and customs.get("ctkPathLineEdit") == "QWidget"


def test_export_formats_in_the_ui_are_the_ones_lesionseglib_plans():
    pytest.importorskip("slicer")
    from LesionSegLib.export import FORMATS

    for module in ("SpleenSeg", "ProstateMetSeg"):
        combo = {w.name: w for w in ui_widgets(module)}["exportFormatComboBox"]
        assert tuple(i.find("property/string").text for i in combo.element.findall("item")) == FORMATS


def test_prostate_lesion_section_has_a_table_view_and_its_actions():
    widgets = {w.name: w for w in ui_widgets("ProstateMetSeg")}
    assert "lesionsCollapsibleButton" in [s.name for s in ui_sections("ProstateMetSeg")]
    assert widgets["lesionTableView"].cls == "qMRMLTableView"
    assert widgets["lesionTableButton"].cls == widgets["saveLesionCsvButton"].cls == "QPushButton"


def _module_constant(module: str, name: str) -> object:
    for node in parse_module(module).body:
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == [name]:
            return ast.literal_eval(node.value)
    raise AssertionError(f"{module}.py defines no constant {name}")


def test_learning_rate_accepts_fine_tuning_rates_like_2_5e_5():
    # A QDoubleSpinBox rounds every value to its decimals, so the rates a user types must survive that rounding;
    # Slicer's connector also sets the decimals from a Decimals(...) annotation, which must agree with the .ui.
    widget = {w.name: w for w in ui_widgets("LesionSegTraining")}["learningRateSpinBox"]
    assert widget.cls == "QDoubleSpinBox" and widget.string("SlicerParameterName") == "learningRate"
    decimals = int(widget.prop("decimals").findtext("number"))
    for rate in (2.5e-5, 1e-6, 3e-4, 0.01):
        assert round(rate, decimals) == pytest.approx(rate, rel=1e-9), f"{rate} shows as {round(rate, decimals)}"
    assert float(widget.prop("singleStep").findtext("double")) <= 1e-5
    field = parameter_node_fields("LesionSegTraining")["learningRate"]
    assert field.base == "float" and "Decimals" in field.validators
    annotation = next(
        node.annotation
        for cls in ast.walk(parse_module("LesionSegTraining"))
        if isinstance(cls, ast.ClassDef)
        for node in cls.body
        if isinstance(node, ast.AnnAssign) and ast.unparse(node.target) == "learningRate"
    )
    call = next(c for c in annotation.slice.elts if isinstance(c, ast.Call) and ast.unparse(c.func) == "Decimals")
    argument = call.args[0]
    value = _module_constant("LesionSegTraining", argument.id) if isinstance(argument, ast.Name) else argument.value
    assert value == decimals
