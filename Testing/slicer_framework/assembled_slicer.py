"""Slicer's own pure-Python framework at one release tag, assembled on slicer-core's MRML in this test process.

The ``slicer`` package is slicer-core's (compiled MRML: vtkMRMLScene, nodes, logics). Its ``__path__`` gets the
tag's ``Base/Python/slicer`` folder in front, so ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``,
``slicer.i18n`` and ``slicer.util`` are Slicer's released files; ``DICOMLib.DICOMUtils`` comes from the tag's
``Modules/Scripted``. Only the compiled parts come from :mod:`qt_standins`: ``qt``, ``ctk``, the ``slicer.q*``
widget classes and ``slicer.app``. ``slicer.mrmlScene`` is a real vtkMRMLScene.

Both tags define the same module names, so :class:`SlicerFramework` restores ``sys.modules``, ``sys.path`` and the
``slicer`` package's attributes when it is closed: the next tag, and every other test, starts from what was there.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import qt_standins

REPO = Path(__file__).resolve().parents[2]
TAGS = ("v5.10.0", "v5.12.3")
MODULES = ("SpleenSeg", "ProstateMetSeg", "LesionSegTraining")
# Ours and Slicer's: imported afresh against each tag's framework, and forgotten afterwards.
FRESH_PREFIXES = ("qt", "ctk", "DICOMLib", "LesionSegLib", *MODULES)
FRESH_SLICER = ("slicer.util", "slicer.i18n", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper")
FRESH_SLICER += ("slicer.logic", "slicer.testing")


def sources_root() -> Path | None:
    """Where Slicer's released Python files are: $SLICER_PYTHON_SOURCES, or ../shared/slicer-python from the repo."""
    configured = os.environ.get("SLICER_PYTHON_SOURCES")
    candidate = Path(configured) if configured else REPO.parent / "shared" / "slicer-python"
    return candidate if candidate.is_dir() else None


def missing_reason(tag: str) -> str | None:
    root = sources_root()
    if root is None:
        return (
            "Slicer's released Python framework is not here: set SLICER_PYTHON_SOURCES to a folder holding "
            f"<tag>/Base/Python/slicer, or put it in {REPO.parent / 'shared' / 'slicer-python'}"
        )
    if not (root / tag / "Base" / "Python" / "slicer" / "ScriptedLoadableModule.py").is_file():
        return f"{root / tag} does not hold Slicer {tag}'s Base/Python/slicer"
    return None


def _fresh(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in FRESH_PREFIXES + FRESH_SLICER)


class SlicerFramework:
    """Slicer ``tag``'s framework on a fresh vtkMRMLScene; ``close()`` puts the process back as it was."""

    def __init__(self, tag: str) -> None:
        import slicer  # slicer-core

        self.tag = tag
        self.root = sources_root() / tag
        self.slicer = slicer
        self._saved_modules = {name: module for name, module in sys.modules.items() if _fresh(name)}
        self._saved_attributes = dict(vars(slicer))
        self._saved_path = list(sys.path)
        self._saved_slicer_path = list(slicer.__path__)
        self._temporary = tempfile.TemporaryDirectory(prefix=f"slicer-{tag}-")
        self.modules: dict[str, Any] = {}
        self.widgets: dict[str, Any] = {}
        try:
            self._assemble()
        except BaseException:
            self.close()
            raise

    def _assemble(self) -> None:
        slicer = self.slicer
        for name in self._saved_modules:
            del sys.modules[name]
        sys.modules.update(qt_standins.modules())
        qt_standins.QSettings._store = {}  # a fresh application's settings
        for cls in qt_standins.SLICER_QT_CLASSES:
            setattr(slicer, cls.__name__, cls)
        slicer.__path__.insert(0, str(self.root / "Base" / "Python" / "slicer"))
        slicer.util = importlib.import_module("slicer.util")
        assert Path(slicer.util.__file__).is_relative_to(self.root), slicer.util.__file__
        slicer.app = qt_standins.SlicerAppStandIn(self._temporary.name, dict(os.environ))
        slicer.mrmlScene = slicer.vtkMRMLScene()
        # Slicer's own __init__ makes these two module objects; slicer-core's does not.
        slicer.modules = types.ModuleType("slicer.modules")
        slicer.moduleNames = types.ModuleType("slicer.moduleNames")
        slicer.selfTests = {}
        sys.path[:0] = [str(REPO)] + [str(REPO / m) for m in MODULES]
        # DICOMLib's __init__ only re-exports its files, and with them its Qt browser and DICOMweb client, none
        # of which an export uses: the package is entered without running it, so ``from DICOMLib import
        # DICOMUtils`` loads the released DICOMUtils.py alone.
        init = self.root / "Modules" / "Scripted" / "DICOMLib" / "__init__.py"
        spec = importlib.util.spec_from_file_location("DICOMLib", init, submodule_search_locations=[str(init.parent)])
        sys.modules["DICOMLib"] = importlib.util.module_from_spec(spec)

    @property
    def temporary_path(self) -> Path:
        return Path(self._temporary.name)

    def load_module(self, name: str) -> Any:
        """What Slicer's module factory does for a scripted module: import ``<name>.py``, make its C++ module
        object and the Python ``<name>`` instance on it; returns the Python module."""
        if name in self.modules:
            return self.modules[name]
        module = importlib.import_module(name)
        assert Path(module.__file__).resolve() == REPO / name / f"{name}.py", module.__file__
        core = qt_standins.qSlicerScriptedLoadableModule(name, module.__file__)
        instance = getattr(module, name)(core)
        core.representation_factory = lambda: self._build_panel(name)
        self.slicer.app.moduleManager().modules[name] = core
        setattr(self.slicer.modules, name.lower(), core)
        setattr(self.slicer.modules, f"{name}Instance", instance)
        setattr(self.slicer.moduleNames, name, name)
        self.modules[name] = module
        return module

    def module_widget(self, name: str) -> Any:
        """The module's panel (``<name>Widget``), built on first use as Slicer does."""
        self.load_module(name)
        return self.slicer.app.moduleManager().module(name).widgetRepresentation().self()

    def _build_panel(self, name: str) -> Any:
        # qSlicerScriptedLoadableModuleWidget: make the Python widget with the panel as parent, then setup().
        representation = qt_standins.qSlicerScriptedLoadableModuleWidget()
        representation.setMRMLScene(self.slicer.mrmlScene)
        widget = getattr(self.modules[name], f"{name}Widget")(representation)
        representation._python = widget
        widget.setup()
        setattr(self.slicer.modules, f"{name}Widget", widget)
        self.widgets[name] = widget
        return representation

    def enter(self, name: str) -> Any:
        widget = self.module_widget(name)
        widget.parent.isEntered = True
        widget.enter()
        return widget

    def exit(self, name: str) -> None:
        widget = self.widgets[name]
        widget.exit()
        widget.parent.isEntered = False

    def close(self) -> None:
        for widget in self.widgets.values():
            widget.cleanup()
        self.widgets.clear()
        slicer = self.slicer
        if hasattr(slicer, "mrmlScene"):
            slicer.mrmlScene.Clear(True)
        for name in [n for n in sys.modules if _fresh(n)]:
            del sys.modules[name]
        sys.modules.update(self._saved_modules)
        for name in set(vars(slicer)) - set(self._saved_attributes):
            delattr(slicer, name)
        for name, value in self._saved_attributes.items():
            if name != "__path__":
                setattr(slicer, name, value)
        slicer.__path__[:] = self._saved_slicer_path
        sys.path[:] = self._saved_path
        self._temporary.cleanup()
