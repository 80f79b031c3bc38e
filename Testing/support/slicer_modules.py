"""Static readers for the Slicer layer: module sources (ast), Qt Designer files (XML) and CMake lists.

The checks that use these read the files the way Slicer's loaders and build macros would, without importing
the modules: they are fast and need no Slicer at all. The modules are imported and run on Slicer's own released
Python framework (ScriptedLoadableModule, parameterNodeWrapper) in Testing/slicer_framework/.
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULES = ("SpleenSeg", "ProstateMetSeg", "LesionSegTraining")
ENGINE = REPO / "lesionseg"
LIBRARY = REPO / "LesionSegLib"  # Qt-side pieces the modules share, installed like Slicer's DICOMLib


def module_dir(module: str) -> Path:
    return REPO / module


def module_source(module: str) -> Path:
    return module_dir(module) / f"{module}.py"


def module_ui(module: str) -> Path:
    return module_dir(module) / "Resources" / "UI" / f"{module}.ui"


@cache
def parse_module(module: str) -> ast.Module:
    return ast.parse(module_source(module).read_text(encoding="utf-8"), filename=str(module_source(module)))


def classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def base_names(cls: ast.ClassDef) -> list[str]:
    return [ast.unparse(base) for base in cls.bases]


def method(cls: ast.ClassDef, name: str) -> ast.FunctionDef | None:
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    return None


# --- parameter node classes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    name: str
    base: str  # the unannotated type: "str", "int", "vtkMRMLScalarVolumeNode", "pathlib.Path", ...
    validators: tuple[str, ...]  # names of the Annotated[...] extras: "Choice", "WithinRange", ...


def _field(name: str, annotation: ast.expr) -> Field:
    if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) in ("Annotated", "typing.Annotated"):
        parts = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) else [annotation.slice]
        extras = tuple(ast.unparse(extra.func) for extra in parts[1:] if isinstance(extra, ast.Call))
        return Field(name, ast.unparse(parts[0]), extras)
    return Field(name, ast.unparse(annotation), ())


def parameter_node_fields(module: str) -> dict[str, Field]:
    """Fields of the module's ``@parameterNodeWrapper`` class, read from its annotations."""
    wrapped = [
        cls
        for cls in classes(parse_module(module)).values()
        if any(ast.unparse(d) in ("parameterNodeWrapper", "slicer.parameterNodeWrapper.parameterNodeWrapper")
               for d in cls.decorator_list)
    ]  # fmt: skip
    if len(wrapped) != 1:
        raise AssertionError(f"{module}.py must hold exactly one @parameterNodeWrapper class, found {len(wrapped)}")
    return {
        node.target.id: _field(node.target.id, node.annotation)
        for node in wrapped[0].body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }


MODULE_WIDGET_BASES = LIBRARY / "modulewidget.py"  # the module widgets' shared frame


@cache
def parse_library_file(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def widget_classes(module: str) -> list[ast.ClassDef]:
    """The module's ``<Module>Widget`` class, then each base it takes from LesionSegLib.modulewidget, nearest
    first (following the bases the way Python's lookup would for single inheritance)."""
    shared = classes(parse_library_file(MODULE_WIDGET_BASES))
    chain = [classes(parse_module(module))[f"{module}Widget"]]
    while True:
        bases = [name for name in base_names(chain[-1]) if name in shared]
        if not bases:
            return chain
        chain.append(shared[bases[0]])


def widget_method(module: str, name: str) -> tuple[ast.ClassDef, ast.FunctionDef] | None:
    """The class and definition Python would run for ``<Module>Widget.<name>``, if LesionSeg defines it."""
    for cls in widget_classes(module):
        found = method(cls, name)
        if found:
            return cls, found
    return None


def ui_attribute_names(module: str) -> set[str]:
    """Every ``<something>.ui.<name>`` the module code reads, including the shared widget bases it uses."""
    trees = [parse_module(module)] + widget_classes(module)[1:]
    return {
        node.attr
        for tree in trees
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
    }


# --- Qt Designer files --------------------------------------------------------------------------------


@dataclass(frozen=True)
class UiWidget:
    cls: str
    name: str
    element: ET.Element

    def prop(self, name: str) -> ET.Element | None:
        for child in self.element.findall("property"):
            if child.get("name") == name:
                return child
        return None

    def string(self, name: str) -> str | None:
        element = self.prop(name)
        if element is None:
            return None
        value = element.find("string")
        return None if value is None else (value.text or "")

    def boolean(self, name: str) -> bool | None:
        element = self.prop(name)
        if element is None or element.find("bool") is None:
            return None
        return element.find("bool").text == "true"

    def string_list(self, name: str) -> list[str]:
        element = self.prop(name)
        if element is None or element.find("stringlist") is None:
            return []
        return [s.text or "" for s in element.find("stringlist").findall("string")]


@cache
def parse_ui(module: str) -> ET.Element:
    return ET.parse(module_ui(module)).getroot()


def ui_widgets(module: str) -> list[UiWidget]:
    return [UiWidget(w.get("class"), w.get("name"), w) for w in parse_ui(module).iter("widget")]


def ui_object_names(module: str) -> set[str]:
    """Names ``slicer.util.childWidgetVariables`` exposes: widgets and layouts."""
    root = parse_ui(module)
    return {e.get("name") for e in root.iter() if e.tag in ("widget", "layout") and e.get("name")}


def ui_root(module: str) -> UiWidget:
    element = parse_ui(module).find("widget")
    return UiWidget(element.get("class"), element.get("name"), element)


def ui_sections(module: str) -> list[UiWidget]:
    """The widgets placed directly in the root widget's layout (spacers left out)."""
    layout = ui_root(module).element.find("layout")
    out = []
    for item in layout.findall("item"):
        widget = item.find("widget")
        if widget is not None:
            out.append(UiWidget(widget.get("class"), widget.get("name"), widget))
    return out


def ui_scene_connections(module: str) -> set[str]:
    """Receivers of the root's ``mrmlSceneChanged(vtkMRMLScene*)`` → ``setMRMLScene(vtkMRMLScene*)``."""
    root_name = ui_root(module).name
    out = set()
    for connection in parse_ui(module).iter("connection"):
        if (
            connection.findtext("sender") == root_name
            and connection.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
            and connection.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
        ):
            out.add(connection.findtext("receiver"))
    return out


# --- CMake lists ----------------------------------------------------------------------------------------


def cmake_commands(path: Path) -> list[tuple[str, list[str]]]:
    """(command, arguments) for each command call, following CMake's quoting and ``#`` comments.

    Quoted arguments come back without their quotes; nested parentheses stay inside their argument.
    """
    text = path.read_text(encoding="utf-8")
    commands: list[tuple[str, list[str]]] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char == "#":
            position = text.find("\n", position)
            position = len(text) if position < 0 else position
            continue
        match = re.compile(r"([A-Za-z_]\w*)\s*\(").match(text, position)
        if not match:
            position += 1
            continue
        position = match.end()
        args: list[str] = []
        token, depth, quoted = "", 0, False
        while position < len(text):
            char = text[position]
            position += 1
            if quoted:
                if char == "\\":
                    token += text[position]
                    position += 1
                elif char == '"':
                    quoted = False
                    args.append(token)
                    token = ""
                else:
                    token += char
            elif char == '"':
                quoted = True
            elif char == "#":
                position = text.find("\n", position)
                position = len(text) if position < 0 else position
            elif char == "(":
                depth += 1
                token += char
            elif char == ")" and depth:
                depth -= 1
                token += char
            elif char == ")":
                break
            elif char.isspace():
                if token:
                    args.append(token)
                token = ""
            else:
                token += char
        if token:
            args.append(token)
        commands.append((match.group(1), args))
    return commands


def cmake_variables(path: Path) -> dict[str, list[str]]:
    """``set(NAME values...)`` in order, with ``${VAR}`` expanded from earlier sets."""
    variables: dict[str, list[str]] = {}
    for name, args in cmake_commands(path):
        if name != "set" or not args:
            continue
        values = []
        for token in args[1:]:
            for var, value in variables.items():
                token = token.replace("${" + var + "}", ";".join(value))
            values.append(token)
        variables[args[0]] = values
    return variables
