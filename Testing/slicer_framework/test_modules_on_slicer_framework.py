"""Slicer loads each LesionSeg module with its own ScriptedLoadableModule and parameterNodeWrapper, per release.

The module files are imported as Slicer's module factory imports them, against Slicer's released Python framework
(assembled_slicer) on a real vtkMRMLScene; only Qt/CTK are stand-ins (qt_standins). Each panel's .ui is loaded into
stand-ins of the classes it names, and bound with Slicer's own ``connectGui``: every widget that carries
``SlicerParameterName`` must take its field's value from the parameter node and give the user's choice back.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import pytest
from assembled_slicer import TAGS, SlicerFramework, missing_reason
from support.slicer_modules import MODULES, module_ui, ui_widgets


def _bound_names_in_ui(module: str) -> set[str]:
    return {w.string("SlicerParameterName") for w in ui_widgets(module) if w.prop("SlicerParameterName") is not None}


@pytest.mark.parametrize("module", MODULES)
def test_slicer_loads_the_module_its_logic_parameter_node_and_self_test(framework, module):
    slicer = framework.slicer
    python_module = framework.load_module(module)

    core = getattr(slicer.modules, module.lower())
    assert core.title and "template" not in core.helpText.lower()
    assert core.categories == ["Segmentation"]
    assert Path(core.icon.path) == Path(core.path).parent / "Resources" / "Icons" / f"{module}.png"
    assert slicer.selfTests[module] == getattr(slicer.modules, f"{module}Instance").runTest

    logic = getattr(python_module, f"{module}Logic")()
    assert logic.moduleName == module
    node = logic.getParameterNode()
    assert type(node).__name__ == f"{module}ParameterNode"
    assert node.parameterNode.GetSingletonTag() == module
    assert node.parameterNode.GetAttribute("ModuleName") == module
    assert logic.getParameterNode().parameterNode is node.parameterNode, "a second parameter node was made"
    for name in node.allParameters:
        assert getattr(node, name) == node.default(name).value, name

    test = getattr(python_module, f"{module}Test")()
    assert isinstance(test, importlib.import_module("slicer.ScriptedLoadableModule").ScriptedLoadableModuleTest)
    assert any(name.startswith("test_") for name in test.moduleTestNames)


# --- binding the .ui to the parameter node --------------------------------------------------------------


def _shown(widget: Any) -> Any:
    """The value the user sees in a bound widget."""
    kind = type(widget).__name__
    if kind == "qMRMLNodeComboBox":
        return widget.currentNode()
    if kind in ("QComboBox", "ctkComboBox"):
        return widget.currentText
    if kind in ("QCheckBox", "ctkCheckBox"):
        return widget.checked
    if kind == "QLineEdit":
        return widget.text
    if kind == "ctkPathLineEdit":
        return widget.currentPath
    return widget.value


def _choose(widget: Any, value: Any) -> None:
    """Set a bound widget the way a user does."""
    kind = type(widget).__name__
    if kind == "qMRMLNodeComboBox":
        widget.setCurrentNode(value)
    elif kind in ("QComboBox", "ctkComboBox"):
        index = widget.findText(str(value))
        assert index >= 0, f"{widget.objectName} does not offer {value!r}"
        widget.currentIndex = index
    elif kind in ("QCheckBox", "ctkCheckBox"):
        if widget.checked != value:
            widget.click()
    elif kind == "QLineEdit":
        widget.text = value
    else:
        widget.value = value


def _two_values(framework, node: Any, name: str, widget: Any) -> tuple[Any, Any]:
    """Two different values of the field, neither its default, that its widget can show exactly."""
    pnw = importlib.import_module("slicer.parameterNodeWrapper")
    datatype = node.dataType(name)
    base, annotations = pnw.splitAnnotations(datatype)
    default = node.default(name).value
    if pnw.isNodeOrUnionOfNodes(datatype):
        scene = framework.slicer.mrmlScene
        node_type = pnw.getNodeTypes(datatype)[0]
        return tuple(scene.AddNewNodeByClass(node_type, f"{name} {i}") for i in (1, 2))
    choice = pnw.findFirstAnnotation(annotations, pnw.Choice)
    if choice is not None:
        others = [c for c in choice.choices if c != default]
        assert len(others) >= 2 or len(choice.choices) == 2, f"{name}: too few choices to test"
        return (others[0], others[1]) if len(others) >= 2 else (others[0], default)
    if base is bool:
        return (not default, default)
    if base is str:
        return ("Dr. A. Example", "second value")
    within = pnw.findFirstAnnotation(annotations, pnw.WithinRange)
    assert within is not None, f"{name}: a number with no range"
    if base is int:
        return (within.minimum + (within.maximum - within.minimum) // 3, within.maximum)
    # A float: its smallest step at the widget's decimals, and a value inside the range.
    step = 10.0**-widget.decimals
    return (round(within.minimum + 37 * step, widget.decimals), round(within.maximum * 0.61, widget.decimals))


def _same(shown: Any, value: Any) -> bool:
    return shown is value if hasattr(value, "GetID") else shown == (str(value) if isinstance(shown, str) else value)


@pytest.mark.parametrize("module", MODULES)
def test_every_bound_widget_shows_its_parameter_and_sets_it(framework, module):
    slicer = framework.slicer
    python_module = framework.load_module(module)
    ui_widget = slicer.util.loadUI(str(module_ui(module)))
    ui_widget.setMRMLScene(slicer.mrmlScene)
    ui = slicer.util.childWidgetVariables(ui_widget)
    node = getattr(python_module, f"{module}Logic")().getParameterNode()

    tag = node.connectGui(ui)  # as LesionSegLib.modulewidget binds the panel

    qt = importlib.import_module("qt")
    bound = {w.property("SlicerParameterName"): w for w in ui_widget.findChildren(qt.QWidget)}
    bound.pop(None, None)
    assert set(bound) == _bound_names_in_ui(module)
    values = {name: _two_values(framework, node, name, widget) for name, widget in bound.items()}
    for name, widget in bound.items():
        first, second = values[name]
        setattr(node, name, first)
        assert _same(_shown(widget), first), f"{module}.{name}: set {first!r}, the widget shows {_shown(widget)!r}"
        _choose(widget, second)
        assert _same(getattr(node, name), second), f"{module}.{name}: chose {second!r}, got {getattr(node, name)!r}"

    node.disconnectGui(tag)
    for name, widget in bound.items():
        _choose(widget, values[name][0])
        assert _same(getattr(node, name), values[name][1]), f"{module}.{name} still follows its widget"


@pytest.mark.parametrize("module", MODULES)
def test_choices_survive_in_the_saved_parameter_node(framework, module):
    """What a user chose is read back by a new wrapper on the same scene node (as after reopening the module)."""
    python_module = framework.load_module(module)
    logic = getattr(python_module, f"{module}Logic")()
    node = logic.getParameterNode()
    ui_widget = framework.slicer.util.loadUI(str(module_ui(module)))
    ui = framework.slicer.util.childWidgetVariables(ui_widget)
    ui_widget.setMRMLScene(framework.slicer.mrmlScene)
    bound = {name: w for w in vars(ui).values() if (name := w.property("SlicerParameterName"))}
    chosen = {name: _two_values(framework, node, name, widget)[0] for name, widget in bound.items()}
    for name, value in chosen.items():
        setattr(node, name, value)

    again = type(node)(node.parameterNode)
    for name, value in chosen.items():
        assert _same(getattr(again, name), value), name


def test_learning_rate_keeps_fine_tuning_rates_through_the_panel(framework):
    """2.5e-5 and 1e-6 are common fine-tuning rates: the spin box must neither round them away nor to zero."""
    slicer = framework.slicer
    python_module = framework.load_module("LesionSegTraining")
    ui_widget = slicer.util.loadUI(str(module_ui("LesionSegTraining")))
    ui = slicer.util.childWidgetVariables(ui_widget)
    node = python_module.LesionSegTrainingLogic().getParameterNode()
    node.connectGui(ui)
    spin_box = next(w for w in vars(ui).values() if w.property("SlicerParameterName") == "learningRate")
    for rate in (2.5e-5, 1e-6):
        node.learningRate = rate
        assert spin_box.value == rate
        spin_box.value = 0.0
        spin_box.value = rate
        assert node.learningRate == rate


def test_epochs_and_learning_rate_are_off_for_an_nnunet_recipe(framework):
    """nnU-Net's trainer sets its own: the panel greys both fields out, says why, and sends neither."""
    python_module = framework.load_module("LesionSegTraining")
    logic = python_module.LesionSegTrainingLogic()
    node = logic.getParameterNode()
    node.configPreset = "nnU-Net 3d_fullres"
    enabled, why = logic.epochsReadiness(node)
    assert not enabled and "nnU-Net" in why
    node.configPreset = "tiny"
    assert logic.epochsReadiness(node)[0]
    widget_states = python_module.LesionSegTrainingWidget.buttonStates
    source = __import__("inspect").getsource(widget_states)
    assert "epochsSpinBox" in source and "learningRateSpinBox" in source


def test_which_case_next_is_ready_only_with_a_folder_and_a_model(framework, tmp_path):
    python_module = framework.load_module("LesionSegTraining")
    logic = python_module.LesionSegTrainingLogic()
    logic.modelsDir = tmp_path / "models"
    node = logic.getParameterNode()
    assert node.rankMethod == "entropy" and not logic.rankReadiness(node, running=False)[0]
    node.rankFolder = str(tmp_path)
    node.rankModelId = "demo-lesion"
    assert "demo-lesion" in logic.rankingModels()  # shipped with its weights: it can rank
    assert logic.rankReadiness(node, running=False)[0] and logic.rankReadiness(None, running=True)[0]  # Cancel
    assert not logic.loadRankedCaseReadiness(None)[0]
    with pytest.raises(ValueError, match="rank the volumes first"):
        logic.loadRankedCase(framework.slicer.mrmlScene, None, 0)


@pytest.mark.parametrize("tag", TAGS)
def test_each_release_is_assembled_apart_and_the_process_is_given_back(tag):
    reason = missing_reason(tag)
    if reason:
        pytest.skip(reason)
    import slicer

    core_util = sys.modules.get("slicer.util")
    framework = SlicerFramework(tag)
    try:
        assert Path(slicer.util.__file__).is_relative_to(framework.root)
        parameter_nodes = importlib.import_module("slicer.parameterNodeWrapper")
        assert Path(parameter_nodes.__file__).is_relative_to(framework.root)
        assert isinstance(slicer.mrmlScene, slicer.vtkMRMLScene) and slicer.app.testingEnabled()
    finally:
        framework.close()
    assert sys.modules.get("slicer.util") is core_util
    assert "qt" not in sys.modules and "slicer.parameterNodeWrapper" not in sys.modules
    assert not hasattr(slicer, "app") and not hasattr(slicer, "mrmlScene")
