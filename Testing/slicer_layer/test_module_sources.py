"""The three Slicer modules, read statically: they compile, follow the scripted-module template, and use
only engine names that exist. (Testing/slicer_framework/ imports and runs them on Slicer's own framework.)"""

from __future__ import annotations

import ast
import importlib
import py_compile

import pytest
from support.slicer_modules import (
    ENGINE,
    LIBRARY,
    MODULES,
    REPO,
    base_names,
    classes,
    method,
    module_source,
    parameter_node_fields,
    parse_module,
    widget_classes,
    widget_method,
)


@pytest.mark.parametrize("path", [module_source(m) for m in MODULES] + [REPO / "scripts" / "make_icons.py"])
def test_module_file_compiles(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "out.pyc"), doraise=True)


@pytest.mark.parametrize("module", MODULES)
def test_module_file_holds_module_widget_logic_and_test_classes(module):
    found = classes(parse_module(module))
    expected_bases = {
        module: ["ScriptedLoadableModule"],
        f"{module}Widget": ["SegmentationModuleWidget" if module in SEGMENTATION_MODULES else "LesionSegModuleWidget"],
        f"{module}Logic": ["ScriptedLoadableModuleLogic"]
        + (["SegmentationResultsLogic", "SegmentingLogic"] if module in SEGMENTATION_MODULES else []),
        f"{module}Test": ["ScriptedLoadableModuleTest"],
    }
    for name, bases in expected_bases.items():
        assert name in found, f"{module}.py has no class {name}"
        assert base_names(found[name]) == bases, f"{name} derives from {base_names(found[name])}, expected {bases}"
    # The widget's frame comes from LesionSegLib, whose root is Slicer's scripted-module widget.
    chain = widget_classes(module)
    assert [c.name for c in chain][-1] == "LesionSegModuleWidget"
    assert base_names(chain[-1]) == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    for name in ("setup", "cleanup", "enter", "exit", "initializeParameterNode", "setParameterNode", "_checkCanApply"):
        assert widget_method(module, name), f"{module}Widget lacks {name}()"
    create = method(found[f"{module}Widget"], "createLogic")
    assert create and ast.unparse(create.body[-1]) == f"return {module}Logic()", f"{module}Widget must create its logic"
    assert method(found[f"{module}Logic"], "getParameterNode"), f"{module}Logic lacks getParameterNode()"


@pytest.mark.parametrize("module", MODULES)
def test_module_widgets_keep_the_parameter_node_frame_in_lesionseglib(module):
    # Binding the .ui to the parameter node works alike in all three modules: one implementation.
    widget = classes(parse_module(module))[f"{module}Widget"]
    for name in ("setup", "cleanup", "enter", "exit", "initializeParameterNode", "setParameterNode", "log"):
        assert not method(widget, name), f"{module}Widget redefines {name}(); LesionSegLib.modulewidget has it"
    # What the shared setup binds is a parameter of this module: volumeField starts as the first volume.
    volume_field = next(
        (ast.literal_eval(n.value) for c in widget_classes(module) for n in c.body
         if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "volumeField"),
        None,
    )  # fmt: skip
    fields = parameter_node_fields(module)
    assert volume_field in fields and fields[volume_field].base == "vtkMRMLScalarVolumeNode"


def _assignments_to_parent(cls: ast.ClassDef) -> dict[str, ast.expr]:
    init = method(cls, "__init__")
    out = {}
    for node in ast.walk(init):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                text = ast.unparse(target)
                if text.startswith("self.parent."):
                    out[text.removeprefix("self.parent.")] = node.value
    return out


def _is_call(node: ast.expr, name: str) -> bool:
    return isinstance(node, ast.Call) and ast.unparse(node.func) == name


@pytest.mark.parametrize("module", MODULES)
def test_module_describes_itself_with_translatable_text(module):
    values = _assignments_to_parent(classes(parse_module(module))[module])
    for key in ("title", "helpText", "acknowledgementText"):
        assert key in values and _is_call(values[key], "_"), f"{module}: parent.{key} must be set through _()"
        assert values[key].args and isinstance(values[key].args[0], ast.Constant), f"{module}: {key} is not literal"
    assert ast.unparse(values["categories"]) == "[translate('qSlicerAbstractCoreModule', 'Segmentation')]"
    assert ast.unparse(values["dependencies"]) == "[]"
    contributors = values["contributors"]
    assert isinstance(contributors, ast.List) and contributors.elts, f"{module}: name the contributors"


@pytest.mark.parametrize("module", MODULES)
def test_self_test_runs_every_scenario_after_setup(module):
    """runTest (Slicer's "Reload and Test") hands every scenario, in order, to LesionSegLib.selftest.run_scenarios,
    which calls setUp before each and lets a skipped one skip alone."""
    test_class = classes(parse_module(module))[f"{module}Test"]
    scenarios = [n.name for n in test_class.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
    assert scenarios, f"{module}Test has no test_* scenario"
    calls = [
        node.value
        for node in method(test_class, "runTest").body
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
    ]
    assert [ast.unparse(call.func) for call in calls] == ["run_scenarios"], f"{module}Test.runTest: {calls}"
    arguments = calls[0].args
    assert ast.unparse(arguments[0]) == "self" and isinstance(arguments[1], ast.List)
    listed = [element.value for element in arguments[1].elts if isinstance(element, ast.Constant)]
    assert listed == scenarios, f"{module}Test.runTest must list every scenario in order, got {listed}"
    assert "slicer.mrmlScene.Clear" in ast.unparse(method(test_class, "setUp"))


def _engine_references(module: str) -> list[tuple[str, int]]:
    """(dotted engine name, line) for every name a module imports from, or reads out of, lesionseg."""
    out = []
    for node in ast.walk(parse_module(module)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lesionseg":
            out += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "lesionseg"]
        elif isinstance(node, ast.Attribute) and ast.unparse(node).startswith("lesionseg."):
            dotted = ast.unparse(node)
            if "(" not in dotted and "[" not in dotted:
                out.append((dotted, node.lineno))
    return out


def _resolve(dotted: str) -> object:
    """Import the longest importable prefix of ``dotted``, then read the rest as attributes."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attr in parts[split:]:
            target = getattr(target, attr)
        return target
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("module", MODULES)
def test_every_engine_name_a_module_uses_exists(module):
    references = _engine_references(module)
    assert references, f"{module}.py does not use the engine; its logic must call lesionseg for what it computes"
    for dotted, line in references:
        try:
            _resolve(dotted)
        except (AttributeError, ModuleNotFoundError):
            pytest.fail(f"{module}.py:{line} uses {dotted}, which the engine does not define")


@pytest.mark.parametrize("module", MODULES)
def test_engine_import_falls_back_to_the_source_tree_for_developers(module):
    source = module_source(module).read_text(encoding="utf-8")
    tree = parse_module(module)
    handlers = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Try)
        and any(isinstance(n, ast.Import) and n.names[0].name.startswith("lesionseg") for n in node.body)
    ]
    assert len(handlers) == 1, f"{module}.py must import lesionseg inside one try/except ModuleNotFoundError"
    handler_text = ast.unparse(handlers[0].handlers[0])
    imported = {alias.name.split(".")[0] for n in handlers[0].body if isinstance(n, ast.Import) for alias in n.names}
    allowed = "(" + ", ".join(repr(name) for name in sorted(imported, key=lambda n: n != "lesionseg")) + ")"
    assert "ModuleNotFoundError" in handler_text and (
        f"error.name not in {allowed}" in handler_text
        or (imported == {"lesionseg"} and "error.name != 'lesionseg'" in handler_text)
    ), f"{module}.py: the fallback must catch exactly the packages its try block imports ({sorted(imported)})"
    assert "sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))" in handler_text
    assert (module_source(module).parent.parent / "lesionseg" / "__init__.py").is_file()
    assert source.index("import lesionseg") < source.index(f"class {module}(")


SEGMENTATION_MODULES = ("SpleenSeg", "ProstateMetSeg")


def _library_references(tree: ast.Module) -> list[tuple[str, str, int]]:
    """(LesionSegLib submodule, name, line) for every ``from LesionSegLib.x import name``."""
    return [
        (node.module.split(".", 1)[1], alias.name, node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("LesionSegLib.")
        for alias in node.names
    ]


def _top_level_names(path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.ImportFrom):
            names |= {a.asname or a.name for a in node.names}
    return names


@pytest.mark.parametrize("module", MODULES)
def test_every_lesionseglib_name_a_module_uses_exists(module):
    # LesionSegLib.widgets imports qt, so the check reads the files instead of importing them.
    for submodule, name, line in _library_references(parse_module(module)):
        path = LIBRARY / f"{submodule.replace('.', '/')}.py"
        assert path.is_file(), f"{module}.py:{line} imports LesionSegLib.{submodule}, which does not exist"
        assert name in _top_level_names(path), f"{module}.py:{line}: LesionSegLib.{submodule} defines no {name}"


@pytest.mark.parametrize("module", SEGMENTATION_MODULES)
def test_segmentation_modules_share_their_panels_through_lesionseglib(module):
    # Comparing and exporting work alike in both modules: one implementation, in LesionSegLib.
    names = {name for _submodule, name, _line in _library_references(parse_module(module))}
    assert {"SegmentationResultsLogic", "SegmentingLogic", "SegmentationModuleWidget"} <= names
    panels = {
        ast.unparse(node.func)
        for cls in widget_classes(module)
        for node in ast.walk(cls)
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("Panel")
    }
    assert {"ComparisonPanel", "ExportPanel", "SegmentPanel"} <= panels
    found = classes(parse_module(module))
    for name in (
        "compareWithReference",
        "planExport",
        "exportSegmentation",
        "lesionTable",
        "startSegmentation",
        "loadSegmentationResult",
        "segmentReadiness",
        "lesionTableReadiness",
    ):
        assert not method(found[f"{module}Logic"], name), f"{module}Logic redefines {name}; use LesionSegLib's"


def test_engine_lives_where_the_modules_and_cmake_expect_it():
    assert ENGINE.name == "lesionseg" and (ENGINE / "__init__.py").is_file()
