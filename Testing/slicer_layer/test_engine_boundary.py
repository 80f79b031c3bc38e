"""The engine stays free of the Slicer app: no ``qt``, ``ctk`` or ``slicer.app`` anywhere in ``lesionseg/``,
and ``slicer`` itself only in the MRML bridge, imported lazily (inside functions or for type checking)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from support.slicer_modules import ENGINE

APP_ONLY = ("qt", "ctk", "slicer.app")
BRIDGE = ENGINE / "mrml"


def _engine_files() -> list[Path]:
    return sorted(p for p in ENGINE.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(tree: ast.AST) -> list[tuple[ast.stmt, list[str], list[ast.AST]]]:
    """(import statement, imported dotted names, its enclosing nodes from the module down)."""
    found = []

    def visit(node: ast.AST, parents: list[ast.AST]) -> None:
        if isinstance(node, ast.Import):
            found.append((node, [alias.name for alias in node.names], parents))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            found.append((node, names, parents))
        for child in ast.iter_child_nodes(node):
            visit(child, [*parents, node])

    visit(tree, [])
    return found


def _is_lazy(parents: list[ast.AST]) -> bool:
    for node in parents:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return True
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _touches(name: str, root: str) -> bool:
    return name == root or name.startswith(root + ".")


@pytest.mark.parametrize("path", _engine_files(), ids=lambda p: p.relative_to(ENGINE).as_posix())
def test_engine_file_stays_below_the_slicer_app(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    where = path.relative_to(ENGINE.parent).as_posix()
    for statement, names, parents in _imports(tree):
        for name in names:
            assert not any(_touches(name, banned) for banned in APP_ONLY), (
                f"{where}:{statement.lineno} imports {name}; the engine must run without Slicer's app and Qt"
            )
            if _touches(name, "slicer"):
                assert BRIDGE in path.parents, f"{where}:{statement.lineno} imports slicer outside lesionseg/mrml/"
                assert _is_lazy(parents), (
                    f"{where}:{statement.lineno} imports slicer at module level; import it inside the function "
                    "(or under TYPE_CHECKING) so the engine imports without slicer-core"
                )
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and ast.unparse(node) == "slicer.app":
            pytest.fail(f"{where}:{node.lineno} uses slicer.app; the engine gets its scene and nodes as arguments")


def test_the_boundary_check_sees_the_bridge():
    # Guards against the scan passing because it looked at nothing.
    bridge_files = [p for p in _engine_files() if BRIDGE in p.parents]
    assert bridge_files
    lazy_slicer_imports = [
        names
        for path in bridge_files
        for _statement, names, parents in _imports(ast.parse(path.read_text(encoding="utf-8")))
        if any(_touches(n, "slicer") for n in names) and _is_lazy(parents)
    ]
    assert lazy_slicer_imports
