# ruff: noqa: N801  (each class carries the Qt, CTK or Slicer class name it stands for; see below)
"""STAND-INS for Qt, CTK and the compiled Qt classes of Slicer (qMRML*, qSlicer*, ctkDICOM*), for tests only.

Why: Qt, CTK and PythonQt are compiled into the Slicer application; outside it they cannot be imported. Slicer's own
pure-Python framework (ScriptedLoadableModule, parameterNodeWrapper, util, DICOMLib) runs unchanged on top of these
stand-ins. Nothing here replaces Slicer's Python code.

What they copy from the real classes:
- Class names. Slicer's guiConnectors choose a connector by ``type(widget)`` (``type(w) in (qt.QSpinBox, ...)``),
  and a .ui file names each widget's class; :func:`load_ui` builds each widget as the stand-in of that name, so a
  .ui widget that no connector accepts for its field fails here as it fails in Slicer.
- PythonQt's surface: Qt properties read and written as attributes, dynamic properties through ``property()`` /
  ``setProperty()``, signals as ``widget.valueChanged.connect(slot)`` and ``widget.connect("valueChanged(int)",
  slot)``, with a slot that takes fewer arguments than the signal called with the first ones, and an exception
  raised in a slot printed, not passed to whoever emitted the signal.
- The value rules the connectors meet: spin boxes clamp to their range and a double spin box rounds to its
  decimals; a combo box selects its first item when it gets one, and ``clear()`` leaves no selection; a signal is
  emitted only when the value changes; a node combo box lists only nodes of its ``nodeTypes`` in its scene, and
  asked to select one it does not list, selects none (qMRMLNodeComboBox::setCurrentNodeID).
Everything else (painting, layouts' geometry, events) is absent.
"""

from __future__ import annotations

import datetime
import inspect
import sys
import traceback
import types
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import vtk

# ================================================================================================ signals and objects


class Signal:
    """A PythonQt-style bound signal."""

    def __init__(self) -> None:
        self._slots: list[Any] = []

    def connect(self, slot: Any) -> None:
        self._slots.append(slot)

    def disconnect(self, slot: Any = None) -> None:
        if slot is None:
            self._slots.clear()
        elif slot in self._slots:
            self._slots.remove(slot)

    def emit(self, *args: Any) -> None:
        for slot in list(self._slots):
            try:
                slot(*args[: _accepted_arguments(slot, len(args))])
            except Exception:
                # PythonQt prints an exception raised in a slot and returns to the emitter (a click() returns).
                traceback.print_exc()


def _accepted_arguments(slot: Any, available: int) -> int:
    # PythonQt passes a Python slot only as many of the signal's arguments as the slot takes.
    try:
        parameters = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):
        return available
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return available
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return min(available, len(positional))


class QObject:
    SIGNALS: tuple[str, ...] = ("destroyed",)
    PROPERTIES: dict[str, Any] = {}  # starting values of attributes, immutable only: they are shared, not copied

    def __init__(self, parent: QObject | None = None) -> None:
        self._parent = None
        self._children: list[QObject] = []
        self._dynamic: dict[str, Any] = {}
        self._blocked = False
        self.objectName = ""
        # Each class lists the attributes it starts with a plain value; a subclass's value wins over its base's.
        for cls in reversed(type(self).__mro__):
            for name, value in cls.__dict__.get("PROPERTIES", {}).items():
                setattr(self, name, value)
        for cls in type(self).__mro__:
            for name in cls.__dict__.get("SIGNALS", ()):
                setattr(self, name, Signal())
        if parent is not None:
            self.setParent(parent)

    # PythonQt exposes objectName also as ``name``
    name = property(lambda self: self.objectName, lambda self, value: setattr(self, "objectName", value))

    def setParent(self, parent: QObject | None) -> None:
        if self._parent is not None:
            self._parent._children.remove(self)
        self._parent = parent
        if parent is not None:
            parent._children.append(self)

    def parent(self) -> QObject | None:
        return self._parent

    def children(self) -> list[QObject]:
        return list(self._children)

    def findChildren(self, cls: type = None) -> list[QObject]:
        found = []
        for child in self._children:
            if cls is None or isinstance(child, cls):
                found.append(child)
            found.extend(child.findChildren(cls))
        return found

    def property(self, name: str) -> Any:
        return self._dynamic.get(name)

    def setProperty(self, name: str, value: Any) -> None:
        self._dynamic[name] = value

    def className(self) -> str:
        return type(self).__name__

    def isWidgetType(self) -> bool:
        return False

    def blockSignals(self, block: bool) -> bool:
        previous, self._blocked = self._blocked, bool(block)
        return previous

    def signalsBlocked(self) -> bool:
        return self._blocked

    def _emit(self, signal: str, *args: Any) -> None:
        if not self._blocked:
            getattr(self, signal).emit(*args)

    def connect(self, signature: str, slot: Any) -> bool:
        getattr(self, signature.split("(")[0]).connect(slot)
        return True

    def disconnect(self, signature: str, slot: Any = None) -> bool:
        getattr(self, signature.split("(")[0]).disconnect(slot)
        return True


class QWidget(QObject):
    SIGNALS = ("customContextMenuRequested",)

    PROPERTIES = {"enabled": True, "visible": True, "toolTip": "", "_layout": None}

    def isWidgetType(self) -> bool:
        return True

    def layout(self) -> QLayout | None:
        return self._layout

    def setLayout(self, layout: QLayout) -> None:
        self._layout = layout
        layout.setParent(self)

    def show(self) -> None:
        self.visible = True

    def hide(self) -> None:
        self.visible = False

    def setEnabled(self, enabled: bool) -> None:
        self.enabled = bool(enabled)

    def deleteLater(self) -> None:
        self.setParent(None)


class QLayout(QObject):
    def addWidget(self, widget: QWidget, *args: Any) -> None:
        # Qt reparents a widget added to a layout to the layout's widget.
        widget.setParent(self.parent() if self.parent() is not None else self)

    def addRow(self, *items: Any) -> None:
        for item in items:
            if isinstance(item, QWidget):
                self.addWidget(item)


class QVBoxLayout(QLayout):
    pass


class QHBoxLayout(QLayout):
    pass


class QFormLayout(QLayout):
    pass


class QGridLayout(QLayout):
    pass


# ================================================================================================ widgets


class QLabel(QWidget):
    PROPERTIES = {"text": "", "wordWrap": False}


class QAbstractButton(QWidget):
    SIGNALS = ("clicked", "toggled", "pressed", "released")

    PROPERTIES = {"text": "", "checkable": False, "_checked": False}

    @property
    def checked(self) -> bool:
        return self._checked

    @checked.setter
    def checked(self, value: bool) -> None:
        value = bool(value) and (self.checkable or isinstance(self, QCheckBox))
        if value != self._checked:
            self._checked = value
            self._toggled(value)

    def _toggled(self, value: bool) -> None:
        self._emit("toggled", value)

    def setChecked(self, value: bool) -> None:
        self.checked = value

    def isChecked(self) -> bool:
        return self.checked

    def click(self) -> None:
        if not self.enabled:
            return
        if self.checkable or isinstance(self, QCheckBox):
            self.checked = not self.checked
        self._emit("clicked", self.checked)


class QPushButton(QAbstractButton):
    pass


class QToolButton(QAbstractButton):
    pass


class QCheckBox(QAbstractButton):
    SIGNALS = ("stateChanged",)

    def _toggled(self, value: bool) -> None:
        self._emit("stateChanged", 2 if value else 0)  # Qt.Checked / Qt.Unchecked
        self._emit("toggled", value)


class QComboBox(QWidget):
    SIGNALS = ("currentIndexChanged", "currentTextChanged", "activated")

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._items: list[str] = []
        self._index = -1

    def setCurrentIndex(self, index: int) -> None:
        index = int(index)
        if not -1 <= index < len(self._items):
            index = -1
        if index != self._index:
            self._index = index
            self._emit("currentIndexChanged", index)
            self._emit("currentTextChanged", self.currentText)

    # Qt's READ currentIndex WRITE setCurrentIndex: PythonQt reads and writes the property as an attribute.
    currentIndex = property(lambda self: self._index, setCurrentIndex)

    @property
    def currentText(self) -> str:
        return self._items[self._index] if self._index >= 0 else ""

    @property
    def count(self) -> int:
        return len(self._items)

    def addItem(self, text: str, *args: Any) -> None:
        self._items.append(str(text))
        if self._index == -1:
            self.currentIndex = 0  # as Qt: the first item becomes current

    def addItems(self, texts: list[str]) -> None:
        for text in texts:
            self.addItem(text)

    def itemText(self, index: int) -> str:
        return self._items[index]

    def findText(self, text: str) -> int:
        return self._items.index(text) if text in self._items else -1

    def clear(self) -> None:
        self._items = []
        self.currentIndex = -1


class _SpinBox(QWidget):
    SIGNALS = ("valueChanged",)
    DEFAULT_MAXIMUM = 99

    PROPERTIES = {"singleStep": 1, "suffix": "", "prefix": "", "specialValueText": ""}

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._minimum, self._maximum, self._value = 0, self.DEFAULT_MAXIMUM, 0

    def _round(self, value: float) -> Any:
        return int(value)

    def _set(self, value: float) -> None:
        value = min(max(self._round(value), self._minimum), self._maximum)
        if value != self._value:
            self._value = value
            self._emit("valueChanged", value)

    @property
    def value(self) -> Any:
        return self._value

    @value.setter
    def value(self, value: float) -> None:
        self._set(value)

    def setValue(self, value: float) -> None:
        self._set(value)

    @property
    def minimum(self) -> Any:
        return self._minimum

    @minimum.setter
    def minimum(self, value: float) -> None:
        self.setRange(value, max(self._maximum, self._round(value)))

    @property
    def maximum(self) -> Any:
        return self._maximum

    @maximum.setter
    def maximum(self, value: float) -> None:
        self.setRange(min(self._minimum, self._round(value)), value)

    def setMinimum(self, value: float) -> None:
        self.minimum = value

    def setMaximum(self, value: float) -> None:
        self.maximum = value

    def setRange(self, minimum: float, maximum: float) -> None:
        self._minimum, self._maximum = self._round(minimum), self._round(maximum)
        self._set(self._value)


class QSpinBox(_SpinBox):
    pass


class QSlider(_SpinBox):
    pass


class QDoubleSpinBox(_SpinBox):
    def __init__(self, parent: QObject | None = None) -> None:
        self._decimals = 2
        super().__init__(parent)
        self._minimum, self._maximum, self._value = 0.0, 99.99, 0.0

    def _round(self, value: float) -> float:
        # Qt keeps a double spin box's value, minimum and maximum rounded to its decimals.
        return round(float(value), self._decimals) if abs(value) != float("inf") else float(value)

    @property
    def decimals(self) -> int:
        return self._decimals

    @decimals.setter
    def decimals(self, value: int) -> None:
        self._decimals = int(value)
        self.setRange(self._minimum, self._maximum)


class QLineEdit(QWidget):
    SIGNALS = ("textChanged", "editingFinished", "returnPressed")

    PROPERTIES = {"_text": "", "placeholderText": "", "readOnly": False}

    @property
    def text(self) -> str:
        return self._text

    @text.setter
    def text(self, value: str) -> None:
        if value != self._text:
            self._text = str(value)
            self._emit("textChanged", self._text)


class QPlainTextEdit(QWidget):
    SIGNALS = ("textChanged",)

    PROPERTIES = {"readOnly": False, "placeholderText": ""}

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._lines: list[str] = []

    def appendPlainText(self, text: str) -> None:
        self._lines.append(text)
        self._emit("textChanged")

    def setPlainText(self, text: str) -> None:
        self._lines = [text] if text else []
        self._emit("textChanged")

    def toPlainText(self) -> str:
        return "\n".join(self._lines)

    def ensureCursorVisible(self) -> None:
        pass


class QTextEdit(QPlainTextEdit):
    pass


class QProgressBar(QWidget):
    PROPERTIES = {"minimum": 0, "maximum": 100, "value": 0}

    def setRange(self, minimum: int, maximum: int) -> None:
        self.minimum, self.maximum = minimum, maximum


class QTableWidgetItem:
    def __init__(self, text: str = "") -> None:
        self._text = text

    def text(self) -> str:
        return self._text

    def setFlags(self, flags: int) -> None:
        self.flags = flags


class _HeaderView:
    def setStretchLastSection(self, stretch: bool) -> None:
        self.stretchLastSection = stretch


class QTableWidget(QWidget):
    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._rows, self._columns, self._cells = 0, 0, {}
        self._header = _HeaderView()

    def setColumnCount(self, count: int) -> None:
        self._columns = count

    def setHorizontalHeaderLabels(self, labels: list[str]) -> None:
        self.headerLabels = list(labels)

    def horizontalHeader(self) -> _HeaderView:
        return self._header

    def setRowCount(self, count: int) -> None:
        self._rows = count
        self._cells = {key: value for key, value in self._cells.items() if key[0] < count}

    def rowCount(self) -> int:
        return self._rows

    def setItem(self, row: int, column: int, item: QTableWidgetItem) -> None:
        self._cells[(row, column)] = item

    def item(self, row: int, column: int) -> QTableWidgetItem | None:
        return self._cells.get((row, column))

    def setCellWidget(self, row: int, column: int, widget: QWidget) -> None:
        self._cells[(row, column)] = widget

    def cellWidget(self, row: int, column: int) -> QWidget | None:
        return self._cells.get((row, column))


class QTimer(QObject):
    SIGNALS = ("timeout",)

    PROPERTIES = {"interval": 0, "active": False}

    def setInterval(self, msec: int) -> None:
        self.interval = msec

    def start(self, *args: Any) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False

    def isActive(self) -> bool:
        return self.active


class QFile:
    ReadOnly = 1

    def __init__(self, path: str) -> None:
        self.path = str(path)

    def exists(self) -> bool:
        return Path(self.path).is_file()

    def open(self, mode: int) -> bool:
        return self.exists()

    def close(self) -> None:
        pass


class QUiLoader:
    def load(self, qfile: QFile, parent: QWidget | None = None) -> QWidget:
        return load_ui(qfile.path, parent)


class QDir:
    def __init__(self, path: Any = "") -> None:
        self.path = path.path if isinstance(path, QDir) else str(path)

    def mkpath(self, path: str) -> bool:
        Path(self.path, path).mkdir(parents=True, exist_ok=True)
        return True

    def absolutePath(self) -> str:
        return str(Path(self.path).absolute())


class QFileInfo:
    def __init__(self, directory: Any, name: str = "") -> None:
        self.path = Path(directory.path if isinstance(directory, QDir) else str(directory), name)

    def absoluteFilePath(self) -> str:
        return str(self.path.absolute())


class QDateTime:
    def __init__(self, moment: datetime.datetime) -> None:
        self.moment = moment

    @staticmethod
    def currentDateTime() -> QDateTime:
        return QDateTime(datetime.datetime.now())


class QLocale:
    English, UnitedStates = 31, 225

    def __init__(self, *args: Any) -> None:
        pass

    def toString(self, moment: QDateTime, form: str) -> str:
        text = form
        for qt_field, python_field in (("yyyy", "%Y"), ("MM", "%m"), ("dd", "%d"), ("hh", "%H"), ("mm", "%M")):
            text = text.replace(qt_field, python_field)
        text = text.replace("ss", "%S").replace("zzz", f"{moment.moment.microsecond // 1000:03d}")
        return moment.moment.strftime(text)


class QSettings:
    """In-memory settings, shared by every instance as Qt's are (one store per application)."""

    _store: dict[str, Any] = {}

    def value(self, key: str, default: Any = None) -> Any:
        return self._store.get(key, default)

    def setValue(self, key: str, value: Any) -> None:
        self._store[key] = value

    def contains(self, key: str) -> bool:
        return key in self._store


class QIcon:
    def __init__(self, path: str = "") -> None:
        self.path = path


class QColor:
    def __init__(self, *args: Any) -> None:
        self.args = args


class QMessageBox(QWidget):
    Ok, Cancel, Yes, No, Retry, Close = 0x400, 0x400000, 0x4000, 0x10000, 0x80000, 0x200000
    NoIcon, Information, Warning, Critical, Question = 0, 1, 2, 3, 4


class QFileDialog:
    """Tests set ``answer`` to the path a user would pick (None: the dialog is cancelled)."""

    answer: str | None = None

    @classmethod
    def getSaveFileName(cls, *args: Any) -> str:
        return cls.answer or ""

    @classmethod
    def getExistingDirectory(cls, *args: Any) -> str:
        return cls.answer or ""


class QKeySequence:
    def __init__(self, keys: str = "") -> None:
        self.keys = str(keys)

    def toString(self) -> str:
        return self.keys


class QShortcut(QObject):
    """A key on a widget: a test presses it with ``activate()`` (Qt emits ``activated()`` when the key is pressed
    within the shortcut's context)."""

    SIGNALS = ("activated",)
    PROPERTIES = {"_context": 1}

    def __init__(self, key: QKeySequence, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.key = key

    def setContext(self, context: int) -> None:
        self._context = context

    def context(self) -> int:
        return self._context

    def activate(self) -> None:
        self._emit("activated")


class Qt:
    WindowShortcut, WidgetShortcut, WidgetWithChildrenShortcut, ApplicationShortcut = 1, 0, 3, 2
    ItemIsSelectable, ItemIsEditable, ItemIsEnabled = 1, 2, 32
    Unchecked, Checked = 0, 2
    WaitCursor = 3
    Horizontal, Vertical = 1, 2
    NoModifier, ShiftModifier = 0, 0x02000000


# ================================================================================================ CTK


class ctkCollapsibleButton(QAbstractButton):
    SIGNALS = ("contentsCollapsed",)

    PROPERTIES = {"collapsed": False}


class ctkCheckBox(QCheckBox):
    pass


class ctkCheckablePushButton(QPushButton):
    PROPERTIES = {"checkBoxControlsButtonToggleState": False}


class ctkComboBox(QComboBox):
    pass


class ctkSliderWidget(QDoubleSpinBox):
    pass


class ctkDoubleSpinBox(QDoubleSpinBox):
    pass


class ctkDoubleSlider(QDoubleSpinBox):
    pass


class ctkRangeWidget(QWidget):
    SIGNALS = ("valuesChanged",)


class ctkDoubleRangeSlider(ctkRangeWidget):
    pass


class ctkDirectoryButton(QWidget):
    SIGNALS = ("directoryChanged",)


class ctkColorPickerButton(QWidget):
    SIGNALS = ("colorChanged",)


class ctkPathLineEdit(QWidget):
    """The path field. Like CTK's, it signals ``currentPathChanged`` for a non-empty path only (an emptied field is
    seen through ``validInputChanged(False)``), since the field validates what is typed as an existing path."""

    SIGNALS = ("currentPathChanged", "validInputChanged")

    PROPERTIES = {"_path": "", "filters": 0, "settingKey": ""}

    def setCurrentPath(self, path: str) -> None:
        path = str(path)
        if path == self._path:
            return
        was_valid, self._path = bool(self._path), path
        if path:
            self._emit("currentPathChanged", path)
        if bool(path) != was_valid:
            self._emit("validInputChanged", bool(path))

    currentPath = property(lambda self: self._path, setCurrentPath)  # READ currentPath WRITE setCurrentPath


class ctkDICOMDatabase(QObject):
    """An in-memory DICOM database: ``insert`` reads each file's UIDs with pydicom, as the indexer does with DCMTK."""

    PROPERTIES = {"isOpen": True}

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._instances: dict[str, dict[str, str]] = {}

    def insert(self, path: str) -> None:
        import pydicom

        header = pydicom.dcmread(path, stop_before_pixels=True)
        self._instances[str(header.SOPInstanceUID)] = {
            "file": str(path),
            "series": str(header.SeriesInstanceUID),
            "study": str(header.StudyInstanceUID),
            "patient": str(header.get("PatientID", "")),
        }

    def fileForInstance(self, uid: str) -> str:
        return self._instances.get(str(uid), {}).get("file", "")

    def seriesForFile(self, path: str) -> str:
        return next((i["series"] for i in self._instances.values() if i["file"] == str(path)), "")

    def patients(self) -> list[str]:
        return sorted({i["patient"] for i in self._instances.values()})

    def studiesForPatient(self, patient: str) -> list[str]:
        return sorted({i["study"] for i in self._instances.values() if i["patient"] == patient})

    def seriesForStudy(self, study: str) -> list[str]:
        return sorted({i["series"] for i in self._instances.values() if i["study"] == study})

    def allFiles(self) -> list[str]:
        return sorted(i["file"] for i in self._instances.values())


class ctkDICOMIndexer(QObject):
    """CTK's indexer API as Slicer 5.10's CTK declares it: ``addDirectory`` walks the folder recursively,
    ``addListOfFiles`` takes exactly the files given; files that are not DICOM are skipped."""

    def _add(self, database: ctkDICOMDatabase, paths: list[str]) -> None:
        import pydicom

        for path in paths:
            try:
                database.insert(path)
            except (pydicom.errors.InvalidDicomError, AttributeError, IsADirectoryError):
                continue

    def addDirectory(self, database: ctkDICOMDatabase, directory: str, copyFile: bool = False, *args: Any) -> None:
        self._add(database, [str(p) for p in sorted(Path(directory).rglob("*")) if p.is_file()])

    def addListOfFiles(self, database: ctkDICOMDatabase, files: list[str], copyFile: bool = False) -> None:
        self._add(database, [str(f) for f in files])

    def waitForImportFinished(self, msecTimeout: int = -1) -> None:
        pass


# ================================================================================================ Slicer's Qt classes


class qMRMLWidget(QWidget):
    SIGNALS = ("mrmlSceneChanged",)

    PROPERTIES = {"_scene": None}

    def setMRMLScene(self, scene: Any) -> None:
        if scene is not self._scene:
            self._scene = scene
            self._emit("mrmlSceneChanged", scene)

    def mrmlScene(self) -> Any:
        return self._scene


class qSlicerWidget(qMRMLWidget):
    pass


class qMRMLNodeComboBox(qMRMLWidget):
    SIGNALS = ("currentNodeChanged", "currentNodeIDChanged", "nodeAdded", "nodeAboutToBeRemoved")

    PROPERTIES = {
        "_current": None,
        "_observation": None,
        "noneEnabled": False,
        "addEnabled": True,
        "removeEnabled": True,
        "renameEnabled": True,
        "showChildNodeTypes": True,
        "showHidden": False,
    }

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._types: list[str] = []

    @property
    def nodeTypes(self) -> list[str]:
        return list(self._types)

    @nodeTypes.setter
    def nodeTypes(self, types_: list[str]) -> None:
        self._types = [t for t in types_ if t]
        if self._current is not None and not self._shows(self._current):
            self._select(None)

    def _shows(self, node: Any) -> bool:
        if node is None or self._scene is None or node.GetScene() is not self._scene:
            return False
        if node.GetHideFromEditors() and not self.showHidden:
            return False
        if self.showChildNodeTypes:
            return any(node.IsA(t) for t in self._types)
        return node.GetClassName() in self._types

    def nodes(self) -> list[Any]:
        if self._scene is None:
            return []
        all_nodes = [self._scene.GetNthNode(i) for i in range(self._scene.GetNumberOfNodes())]
        return [node for node in all_nodes if self._shows(node)]

    def setMRMLScene(self, scene: Any) -> None:
        if scene is self._scene:
            return
        if self._scene is not None:
            self._scene.RemoveObserver(self._observation)
        self._scene, self._observation = scene, None
        if scene is not None:
            self._observation = scene.AddObserver(scene.NodeRemovedEvent, self._onNodeRemoved)
        self._select(None)
        self._emit("mrmlSceneChanged", scene)

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _onNodeRemoved(self, caller: Any, event: Any, node: Any) -> None:
        if node is self._current:
            self._select(None)

    def _select(self, node: Any) -> None:
        if node is not self._current:
            self._current = node
            self._emit("currentNodeChanged", node)
            self._emit("currentNodeIDChanged", node.GetID() if node is not None else "")

    def currentNode(self) -> Any:
        return self._current

    def currentNodeID(self) -> str:
        return self._current.GetID() if self._current is not None else ""

    def setCurrentNode(self, node: Any) -> None:
        # As qMRMLNodeComboBox::setCurrentNodeID: a node it does not list (another type, scene, or hidden) leaves
        # no node selected.
        self._select(node if self._shows(node) else None)

    def setCurrentNodeID(self, node_id: str) -> None:
        self.setCurrentNode(self._scene.GetNodeByID(node_id) if self._scene is not None and node_id else None)


class qMRMLSliderWidget(ctkSliderWidget):
    pass


class qMRMLSpinBox(ctkDoubleSpinBox):
    pass


class qMRMLRangeWidget(ctkRangeWidget):
    pass


class _ModelIndex:
    def __init__(self, row: int = -1) -> None:
        self._row = row

    def isValid(self) -> bool:
        return self._row >= 0

    def row(self) -> int:
        return self._row


class _SelectionModel:
    def __init__(self) -> None:
        self.current = _ModelIndex()

    def currentIndex(self) -> _ModelIndex:
        return self.current


class _IdentityModel:
    def mapToSource(self, index: _ModelIndex) -> _ModelIndex:
        return index

    def index(self, row: int, column: int) -> _ModelIndex:
        return _ModelIndex(row)


class qMRMLTableView(qMRMLWidget):
    SIGNALS = ("clicked", "doubleClicked")

    PROPERTIES = {"_table": None}

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._selection = _SelectionModel()
        self._proxy = _IdentityModel()

    def setMRMLTableNode(self, node: Any) -> None:
        self._table = node

    def mrmlTableNode(self) -> Any:
        return self._table

    def selectionModel(self) -> _SelectionModel:
        return self._selection

    def sortFilterProxyModel(self) -> _IdentityModel:
        return self._proxy

    def model(self) -> _IdentityModel:
        return self._proxy

    def tableModel(self) -> _IdentityModel:
        return self._proxy

    def selectRow(self, row: int) -> _ModelIndex:
        self._selection.current = _ModelIndex(row)
        return self._selection.current


class qSlicerScriptedLoadableModuleWidget(qSlicerWidget):
    """The module panel Slicer makes for a scripted module: it holds the Python widget (``self()``)."""

    PROPERTIES = {"isEntered": False, "_python": None}

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.setLayout(QVBoxLayout())

    def self(self) -> Any:
        return self._python


class qSlicerScriptedLoadableModule(QObject):
    """The C++ side of a scripted module: its file path and its Python instance."""

    def __init__(self, name: str, path: str) -> None:
        super().__init__()
        self.name, self.path = name, path
        self.title, self.categories, self.dependencies, self.contributors = "", [], [], []
        self.helpText = self.acknowledgementText = ""
        self.icon = None
        self.representation_factory: Any = None  # set by whoever plays Slicer's module factory
        self._representation: qSlicerScriptedLoadableModuleWidget | None = None

    def widgetRepresentation(self) -> qSlicerScriptedLoadableModuleWidget | None:
        # Slicer builds a module's panel the first time it is asked for.
        if self._representation is None and self.representation_factory is not None:
            self._representation = self.representation_factory()
        return self._representation

    def logic(self) -> Any:
        return None


class _ModuleManager(QObject):
    SIGNALS = ("moduleAboutToBeUnloaded", "moduleLoaded")

    def __init__(self) -> None:
        super().__init__()
        self.modules: dict[str, qSlicerScriptedLoadableModule] = {}

    def module(self, name: str) -> qSlicerScriptedLoadableModule | None:
        return self.modules.get(name)


class _Environment:
    def __init__(self, values: dict[str, str]) -> None:
        self._values = dict(values)

    def keys(self) -> list[str]:
        return list(self._values)

    def value(self, key: str) -> str:
        return self._values[key]


class SlicerAppStandIn(QObject):
    """STAND-IN for ``slicer.app`` (qSlicerApplication) in testing mode (as ``Slicer --testing``): message boxes are
    logged instead of shown, no main window, no layout manager, no translation loaded."""

    def __init__(self, temporary_path: str, environment: dict[str, str]) -> None:
        super().__init__()
        self.temporaryPath = temporary_path
        self.applicationName = "Slicer"
        self._environment = environment
        self._manager = _ModuleManager()
        self._settings = QSettings()

    def translate(self, context: str, text: str) -> str:
        return text

    def testingEnabled(self) -> bool:
        return True

    def startupEnvironment(self) -> _Environment:
        return _Environment(self._environment)

    def moduleManager(self) -> _ModuleManager:
        return self._manager

    def topLevelWidgets(self) -> list[QWidget]:
        return []

    def layoutManager(self) -> None:
        return None

    def settings(self) -> QSettings:
        return self._settings

    def userSettings(self) -> QSettings:
        return self._settings

    def processEvents(self, *args: Any) -> None:
        pass

    def setOverrideCursor(self, cursor: Any) -> None:
        pass

    def restoreOverrideCursor(self) -> None:
        pass


# ================================================================================================ .ui loading


def _property_value(element: ET.Element) -> tuple[bool, Any]:
    """(understood, value) of a Qt Designer property element."""
    value = element[0] if len(element) else None
    if value is None:
        return False, None
    if value.tag == "string":
        return True, value.text or ""
    if value.tag == "bool":
        return True, value.text == "true"
    if value.tag == "number":
        return True, int(value.text)
    if value.tag == "double":
        return True, float(value.text)
    if value.tag == "stringlist":
        return True, [s.text or "" for s in value.findall("string")]
    return False, None  # rect, size, enum, set, font...: what these stand-ins do not model


def _build(element: ET.Element, parent: QObject | None, registry: dict[str, type], named: dict[str, QObject]) -> Any:
    cls_name = element.get("class")
    if cls_name not in registry:
        raise TypeError(f"no stand-in for the .ui widget class {cls_name!r} ({element.get('name')})")
    obj = registry[cls_name](parent)
    obj.objectName = element.get("name") or ""
    named[obj.objectName] = obj
    for child in element:
        if child.tag == "property":
            name = child.get("name")
            understood, value = _property_value(child)
            if child.get("stdset") == "0":
                obj.setProperty(name, value)
            elif understood and hasattr(obj, name):
                setattr(obj, name, value)
        elif child.tag == "item" and isinstance(obj, QComboBox):
            text = child.find("property[@name='text']/string")
            obj.addItem(text.text if text is not None and text.text else "")
        elif child.tag == "widget":
            _build(child, obj, registry, named)
        elif child.tag == "layout":
            layout = _build(child, None, registry, named)
            if isinstance(obj, QWidget) and obj.layout() is None:
                obj.setLayout(layout)
            else:  # a layout nested in a layout belongs to the same widget
                layout.setParent(obj.parent() if isinstance(obj, QLayout) else obj)
            _fill_layout(child, layout, registry, named)
    return obj


def _fill_layout(element: ET.Element, layout: QLayout, registry: dict[str, type], named: dict[str, QObject]) -> None:
    owner = layout.parent()
    for item in element.findall("item"):
        for child in item:
            if child.tag == "widget":
                _build(child, owner, registry, named)
            elif child.tag == "layout":
                nested = _build(child, owner, registry, named)
                _fill_layout(child, nested, registry, named)


def load_ui(path: str | Path, parent: QWidget | None = None) -> QWidget:
    """Build the widget tree of a Qt Designer file from stand-ins, as QUiLoader does, connections included."""
    root = ET.parse(path).getroot()
    named: dict[str, QObject] = {}
    widget = _build(root.find("widget"), parent, REGISTRY, named)
    for connection in root.iter("connection"):
        sender = named[connection.findtext("sender")]
        receiver = named[connection.findtext("receiver")]
        slot = getattr(receiver, connection.findtext("slot").split("(")[0])
        sender.connect(connection.findtext("signal"), slot)
    return widget


# ================================================================================================ the modules


def _module(name: str, classes: list[Any], **extra: Any) -> types.ModuleType:
    module = types.ModuleType(name, f"STAND-IN for the compiled {name} module (see {__name__})")
    for obj in classes:
        setattr(module, obj.__name__, obj)
    for key, value in extra.items():
        setattr(module, key, value)
    return module


_QT = [QObject, QWidget, QLayout, QVBoxLayout, QHBoxLayout, QFormLayout, QGridLayout, QLabel, QAbstractButton]
_QT += [QPushButton, QToolButton, QCheckBox, QComboBox, QSpinBox, QSlider, QDoubleSpinBox, QLineEdit]
_QT += [QPlainTextEdit, QTextEdit, QProgressBar, QTableWidget, QTableWidgetItem, QTimer, QFile, QUiLoader]
_QT += [QDir, QFileInfo, QDateTime, QLocale, QSettings, QIcon, QColor, QMessageBox, QFileDialog, Qt]
_QT += [QKeySequence, QShortcut]
_CTK = [ctkCollapsibleButton, ctkCheckBox, ctkCheckablePushButton, ctkComboBox, ctkSliderWidget, ctkDoubleSpinBox]
_CTK += [ctkDoubleSlider, ctkRangeWidget, ctkDoubleRangeSlider, ctkDirectoryButton, ctkColorPickerButton]
_CTK += [ctkPathLineEdit, ctkDICOMDatabase, ctkDICOMIndexer]
SLICER_QT_CLASSES = [qMRMLWidget, qSlicerWidget, qMRMLNodeComboBox, qMRMLSliderWidget, qMRMLSpinBox]
SLICER_QT_CLASSES += [qMRMLRangeWidget, qMRMLTableView, qSlicerScriptedLoadableModuleWidget]
SLICER_QT_CLASSES += [qSlicerScriptedLoadableModule]
REGISTRY: dict[str, type] = {cls.__name__: cls for cls in _QT + _CTK + SLICER_QT_CLASSES}


def modules() -> dict[str, types.ModuleType]:
    """Fresh ``qt`` and ``ctk`` modules of stand-ins, to put in ``sys.modules``."""
    return {"qt": _module("qt", _QT, Widget=QWidget), "ctk": _module("ctk", _CTK)}


__all__ = [name for name in dir(sys.modules[__name__]) if not name.startswith("_")]
