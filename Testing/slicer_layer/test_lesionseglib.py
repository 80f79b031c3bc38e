"""LesionSegLib, the package SpleenSeg and ProstateMetSeg share, read statically: its CMake list, its
Qt-free boundary, and the widget names its panels expect in the modules' .ui files."""

from __future__ import annotations

import ast
import py_compile

import pytest
from support.slicer_modules import (
    LIBRARY,
    REPO,
    cmake_commands,
    cmake_variables,
    parse_module,
    ui_object_names,
    widget_classes,
)

# The two files allowed to need Slicer's app: the Qt panels, and the calls into SlicerRT and the DICOM database.
APP_FILES = {"widgets.py", "modulewidget.py", "dicomapp.py"}
APP_ONLY = ("qt", "ctk", "slicer.app", "slicer.ScriptedLoadableModule", "DICOMLib", "DicomRtImportExportPlugin")


def _library_files():
    return sorted(p for p in LIBRARY.glob("*.py"))


def _imports(tree: ast.AST):
    """(statement, dotted names, inside a function?) for every import."""
    found = []

    def visit(node, lazy):
        if isinstance(node, ast.Import):
            found.append((node, [a.name for a in node.names], lazy))
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node, [node.module] + [f"{node.module}.{a.name}" for a in node.names], lazy))
        for child in ast.iter_child_nodes(node):
            visit(child, lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(tree, False)
    return found


def _touches(name: str, root: str) -> bool:
    return name == root or name.startswith(root + ".")


def test_library_is_installed_as_a_package_beside_the_modules():
    path = LIBRARY / "CMakeLists.txt"
    assert cmake_variables(path)["MODULE_NAME"] == [LIBRARY.name] == ["LesionSegLib"]
    build = [args for name, args in cmake_commands(path) if name == "slicerMacroBuildScriptedModule"]
    assert len(build) == 1 and "WITH_SUBDIR" in build[0] and "WITH_GENERIC_TESTS" not in build[0]
    listed = set(cmake_variables(path)["MODULE_PYTHON_SCRIPTS"])
    on_disk = {p.name for p in _library_files()}
    assert listed == on_disk, f"LesionSegLib/CMakeLists.txt lists {sorted(listed)}, the folder holds {sorted(on_disk)}"


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: p.name)
def test_library_file_compiles(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "out.pyc"), doraise=True)


@pytest.mark.parametrize("path", [p for p in _library_files() if p.name not in APP_FILES], ids=lambda p: p.name)
def test_logic_files_stay_below_the_slicer_app(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for statement, names, lazy in _imports(tree):
        for name in names:
            assert not any(_touches(name, banned) for banned in APP_ONLY), (
                f"LesionSegLib/{path.name}:{statement.lineno} imports {name}; only {sorted(APP_FILES)} may need the app"
            )
            if any(_touches(name, f"LesionSegLib.{app[:-3]}") for app in APP_FILES):
                assert lazy, f"LesionSegLib/{path.name}:{statement.lineno} imports {name} at module level"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and ast.unparse(node) in (
            "slicer.app",
            "slicer.mrmlScene",
            "slicer.modules",
        ):
            pytest.fail(
                f"LesionSegLib/{path.name}:{node.lineno} uses {ast.unparse(node)}; take the scene as an argument"
            )


def test_the_boundary_check_sees_the_app_files():
    # Guards against the scan passing because it looked at nothing.
    widgets = ast.parse((LIBRARY / "widgets.py").read_text(encoding="utf-8"))
    assert any("qt" in names for _s, names, _lazy in _imports(widgets))
    assert len([p for p in _library_files() if p.name not in APP_FILES]) >= 6


def _panel_widget_names() -> dict[str, set[str]]:
    """For each panel class in widgets.py, the ``ui.<name>`` widgets it reads."""
    tree = ast.parse((LIBRARY / "widgets.py").read_text(encoding="utf-8"))
    out = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name.endswith("Panel"):
            out[node.name] = {
                sub.attr
                for sub in ast.walk(node)
                if isinstance(sub, ast.Attribute)
                and (
                    (isinstance(sub.value, ast.Name) and sub.value.id == "ui")
                    or (isinstance(sub.value, ast.Attribute) and sub.value.attr == "ui")
                )
            }
    return out


def _panels_used(module: str) -> set[str]:
    """Panels the module builds, itself or through the shared widget bases it derives from."""
    return {
        ast.unparse(node.func)
        for tree in [parse_module(module)] + widget_classes(module)[1:]
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("Panel")
    }


@pytest.mark.parametrize("module", ["SpleenSeg", "ProstateMetSeg", "LesionSegTraining"])
def test_every_widget_a_shared_panel_reads_is_in_the_modules_ui(module):
    panels = _panel_widget_names()
    assert {"ComparisonPanel", "ExportPanel", "LesionTablePanel"} <= set(panels)
    for panel in _panels_used(module):
        missing = panels[panel] - ui_object_names(module)
        assert not missing, f"{module} uses {panel}, which reads {sorted(missing)} that {module}.ui lacks"


def test_both_segmentation_modules_use_the_comparison_and_export_panels():
    assert {"ComparisonPanel", "ExportPanel"} <= _panels_used("SpleenSeg")
    assert {"ComparisonPanel", "ExportPanel", "LesionTablePanel"} <= _panels_used("ProstateMetSeg")


def test_library_package_file_imports_nothing():
    # "import LesionSegLib.comparison" runs __init__.py first; an import there could pull Qt into the
    # Qt-free parts. The modules find the package in the repository root when it is not installed.
    assert LIBRARY.parent == REPO
    tree = ast.parse((LIBRARY / "__init__.py").read_text(encoding="utf-8"))
    assert not _imports(tree)


@pytest.mark.parametrize("module", ["SpleenSeg", "ProstateMetSeg", "LesionSegTraining"])
def test_self_tests_stand_alone_without_the_repository_test_helpers(module):
    # The self-tests run inside an installed extension, where Testing/ does not exist.
    for _statement, names, _lazy in _imports(parse_module(module)):
        for name in names:
            assert not (_touches(name, "support") or _touches(name, "Testing") or _touches(name, "pytest")), (
                f"{module}.py imports {name}; build test data inline or with LesionSegLib.selftest"
            )


def test_library_never_imports_the_repository_test_helpers():
    for path in _library_files():
        for _statement, names, _lazy in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            assert not any(_touches(n, "support") or _touches(n, "Testing") for n in names), path.name


def _write_package(root, name: str, value: int) -> None:
    package = root / name
    (package / "sub").mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(f"VALUE = {value}\n", encoding="utf-8")
    (package / "sub" / "__init__.py").write_text("", encoding="utf-8")
    (package / "sub" / "leaf.py").write_text(f"VALUE = {value}\n", encoding="utf-8")


def test_reload_in_developer_mode_reads_the_shared_packages_from_source_again(tmp_path, monkeypatch):
    import importlib
    import os
    import sys

    from LesionSegLib.reloading import RELOADED_PACKAGES, forget_packages

    assert RELOADED_PACKAGES == ("LesionSegLib", "lesionseg")
    # Real packages on disk, named apart from the ones under test; a look-alike name must stay.
    _write_package(tmp_path, "EditedLib", 1)
    _write_package(tmp_path, "EditedLibOther", 1)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert importlib.import_module("EditedLib.sub.leaf").VALUE == 1
        importlib.import_module("EditedLibOther")
        _write_package(tmp_path, "EditedLib", 2)
        for path in tmp_path.rglob("*.py"):  # same-second edits must still look newer to the bytecode cache
            os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 10))
        assert importlib.import_module("EditedLib.sub.leaf").VALUE == 1  # what Slicer's Reload alone gives

        removed = forget_packages(("EditedLib",))
        assert removed == ["EditedLib", "EditedLib.sub", "EditedLib.sub.leaf"]
        assert "EditedLibOther" in sys.modules
        assert importlib.import_module("EditedLib.sub.leaf").VALUE == 2
        assert importlib.import_module("EditedLib").VALUE == 2
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] in ("EditedLib", "EditedLibOther")]:
            del sys.modules[name]


def test_reload_forgets_the_shared_packages_before_slicer_reloads_the_module_file():
    # Slicer's ScriptedLoadableModuleWidget.onReload executes the module file again; that file imports
    # LesionSegLib and the engine, which must be gone from sys.modules by then.
    frame = next(c for c in widget_classes("SpleenSeg") if c.name == "LesionSegModuleWidget")
    reload = next(n for n in frame.body if isinstance(n, ast.FunctionDef) and n.name == "onReload")
    calls = [ast.unparse(n.func) for n in ast.walk(reload) if isinstance(n, ast.Call)]
    assert calls == ["forget_packages", "ScriptedLoadableModuleWidget.onReload"]
    for module in ("SpleenSeg", "ProstateMetSeg", "LesionSegTraining"):
        chain = widget_classes(module)
        owners = [c.name for c in chain if any(isinstance(n, ast.FunctionDef) and n.name == "onReload" for n in c.body)]
        assert owners == ["LesionSegModuleWidget"], f"{module}Widget's Reload is not the shared one: {owners}"
