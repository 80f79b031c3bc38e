"""Contract: the engine's geometry conventions are written in the geometry modules and nowhere else.

An LPS/RAS sign flip, a direction matrix written out as numbers, an axis flip of a direction matrix or affine, or a
millimetre tolerance for comparing physical points (named, or a bare number such as ``1e-3`` compared with a
position), written a second time, is where a silent mirror or a refused series comes from.  This test
reads the engine's source (no import) and names every such literal outside the allow-list below.  Use
``lesionseg.image.RAS_FROM_LPS``, ``POSITION_TOLERANCE_MM``/``GRID_TOLERANCE_MM`` and
``lesionseg.orientation.permute_axes``/``reorient`` instead, or add a module to the allow-list with its reason.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[2] / "lesionseg"

SIGN_CONSTANT = "LPS/RAS sign constant"
AXIS_FLIP = "axis flip of a direction matrix or affine"
DIRECTION_CONSTANT = "direction-matrix constant"
TOLERANCE = "physical-point tolerance literal"

# (module, kind): why that module may write it.
ALLOWED = {
    ("image.py", SIGN_CONSTANT): "RAS_FROM_LPS, beside the convention it converts",
    ("image.py", TOLERANCE): "POSITION_TOLERANCE_MM and GRID_TOLERANCE_MM, with the reason for each value",
    ("orientation.py", AXIS_FLIP): "permute_axes, the engine's one re-indexer",
    ("io/nrrd.py", SIGN_CONSTANT): "a NRRD header's named space to LPS signs (four spaces, not just RAS)",
}

# Names of expressions that hold a grid's orientation: negating or sign-multiplying one flips an axis.
_GEOMETRY_NAME = re.compile(r"affine|direction|index_to_world|ijk_?to|to_?ijk|\bras|\blps|ras_|lps_", re.IGNORECASE)
_TOLERANCE_NAME = re.compile(r"tol\w*_mm|mm\w*_tol", re.IGNORECASE)
# Names of expressions that hold physical points or distances between them (mm): a small bare number compared with
# one is a position tolerance.
_POINT_NAME = re.compile(
    r"position|origin|world|corner|cent(?:re|er)|drift|offset|height|\balong\b|\bgaps?\b|distance|_mm\b|\bpoints?\b",
    re.IGNORECASE,
)
# The largest bare number that reads as a tolerance rather than a size: 0.1 mm is half the finest clinical voxel.
_LARGEST_TOLERANCE = 0.1


def _number(node: ast.AST) -> float | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _number(node.operand)
        return None if value is None else -value
    return None


def _holds_minus_one(node: ast.AST) -> bool:
    return any(_number(sub) == -1.0 for sub in ast.walk(node))


def _names_geometry(node: ast.AST) -> bool:
    return bool(_GEOMETRY_NAME.search(ast.unparse(node)))


def _names_point(node: ast.AST) -> bool:
    return bool(_POINT_NAME.search(ast.unparse(node)))


def _is_small_number(node: ast.AST) -> bool:
    value = _number(node)
    return value is not None and 0 < abs(value) <= _LARGEST_TOLERANCE


def _is_axis_matrix(node: ast.AST) -> bool:
    """A 3x3 or 4x4 literal whose every row is a signed unit axis: a direction (or index-to-world) matrix."""
    if not isinstance(node, ast.List | ast.Tuple) or len(node.elts) not in (3, 4):
        return False
    rows = [row.elts for row in node.elts if isinstance(row, ast.List | ast.Tuple) and len(row.elts) == len(node.elts)]
    if len(rows) != len(node.elts):
        return False
    values = [[_number(e) for e in row] for row in rows]
    return all(None not in row and set(row) <= {-1.0, 0.0, 1.0} and sum(map(abs, row)) == 1 for row in values)


def find_geometry_literals(source: str) -> list[tuple[str, int, str]]:
    """(kind, line, code) for every geometry literal in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        kind = None
        if _is_axis_matrix(node):
            kind = DIRECTION_CONSTANT
        elif isinstance(node, ast.List | ast.Tuple) and len(node.elts) in (3, 4):
            values = [_number(e) for e in node.elts]
            if None not in values and set(values) <= {-1.0, 1.0} and -1.0 in values:
                kind = SIGN_CONSTANT
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_is_small_number(side) for side in sides) and any(_names_point(side) for side in sides):
                kind = TOLERANCE
        elif isinstance(node, ast.Call) and any(_names_point(arg) for arg in node.args):
            if any(k.arg == "atol" and _is_small_number(k.value) for k in node.keywords):
                kind = TOLERANCE
        elif isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Mult) and _holds_minus_one(node.value):
            kind = AXIS_FLIP
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            for a, b in ((node.left, node.right), (node.right, node.left)):
                if _names_geometry(a) and _holds_minus_one(b):
                    kind = AXIS_FLIP
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and _number(node) is None:
            if _names_geometry(node.operand):
                kind = AXIS_FLIP
        elif isinstance(node, ast.Subscript) and _names_geometry(node.value) and "::-1" in ast.unparse(node.slice):
            kind = AXIS_FLIP
        elif isinstance(node, ast.Assign | ast.AnnAssign) and _number(node.value) is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and _TOLERANCE_NAME.search(t.id) for t in targets):
                kind = TOLERANCE
        elif isinstance(node, ast.keyword) and node.arg and _TOLERANCE_NAME.search(node.arg):
            kind = TOLERANCE if _number(node.value) is not None else None
        elif isinstance(node, ast.arguments):
            positional = node.posonlyargs + node.args
            pairs = list(zip(positional[len(positional) - len(node.defaults) :], node.defaults, strict=True))
            pairs += [(a, d) for a, d in zip(node.kwonlyargs, node.kw_defaults, strict=True) if d is not None]
            for arg, default in pairs:
                if _TOLERANCE_NAME.search(arg.arg) and _number(default) is not None:
                    found.append((TOLERANCE, default.lineno, f"{arg.arg}={ast.unparse(default)}"))
        if kind is not None:
            found.append((kind, node.lineno, ast.unparse(node)))
    return found


def _engine_findings() -> dict[tuple[str, str], list[str]]:
    findings: dict[tuple[str, str], list[str]] = {}
    for path in sorted(ENGINE.rglob("*.py")):
        module = path.relative_to(ENGINE).as_posix()
        for kind, line, code in find_geometry_literals(path.read_text(encoding="utf-8")):
            findings.setdefault((module, kind), []).append(f"lesionseg/{module}:{line}: {code}")
    return findings


def test_geometry_conventions_are_written_only_in_the_geometry_modules():
    stray = [where for key, lines in _engine_findings().items() if key not in ALLOWED for where in lines]
    assert not stray, (
        "geometry written outside its home; use lesionseg.image (RAS_FROM_LPS, POSITION_TOLERANCE_MM, "
        "GRID_TOLERANCE_MM) or lesionseg.orientation (permute_axes, reorient):\n" + "\n".join(stray)
    )


def test_every_allowed_geometry_home_still_holds_what_it_is_allowed():
    # A stale entry would let the next copy in unnoticed.
    findings = _engine_findings()
    stale = [f"{module}: {kind} ({why})" for (module, kind), why in ALLOWED.items() if (module, kind) not in findings]
    assert not stale, "allow-list entries with nothing left to allow; remove them:\n" + "\n".join(stale)


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])", SIGN_CONSTANT),
        ("sign = np.array((-1, -1, 1))", SIGN_CONSTANT),
        ("affine[:2] *= -1", AXIS_FLIP),
        ("lps = affine * np.array([[-1], [-1], [1], [1]])", AXIS_FLIP),
        ("flipped = -image.direction", AXIS_FLIP),
        ("mirrored = direction[:, ::-1]", AXIS_FLIP),
        ("_INSIDE_TOLERANCE_MM = 1e-3", TOLERANCE),
        ("ok = same(a, b, tolerance_mm=0.01)", TOLERANCE),
        ("def near(a, b, tol_mm=1e-3): pass", TOLERANCE),
        ("def near(a, b, *, tolerance_mm: float = 1e-3): pass", TOLERANCE),
        ("same = np.abs(a.position - b.position).max() < 1e-3", TOLERANCE),
        ("duplicate = np.diff(along).min() < 0.01", TOLERANCE),
        ("if 1e-2 >= drift: pass", TOLERANCE),
        ("same = np.allclose(image.origin, other.origin, atol=1e-3)", TOLERANCE),
        ("SWAPPED = np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1]])", DIRECTION_CONSTANT),
        ("RAS = ((-1, 0, 0, 0), (0, -1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1))", DIRECTION_CONSTANT),
    ],
)
def test_a_second_copy_of_geometry_is_caught(source, kind):
    assert kind in [found_kind for found_kind, _, _ in find_geometry_literals(source)]


@pytest.mark.parametrize(
    "source",
    [
        "ras = RAS_FROM_LPS @ image.index_to_world",
        "ok = same(a, b, tolerance_mm=POSITION_TOLERANCE_MM)",
        "last = values[-1]",
        "batch = array.reshape(1, -1, 1, 1)",
        "scale = [-1.0, 0.5, 2.0]",
        "same = np.abs(a.position - b.position).max() < POSITION_TOLERANCE_MM",
        "converged = loss < 1e-3",
        "near = np.abs(index - np.round(index)) < 1e-6",
        "far = distance > 5.0",
        "ok = np.allclose(probabilities, expected, atol=1e-3)",
        "cross = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]",
        "pairs = [(1, 0), (0, 1)]",
    ],
)
def test_ordinary_code_is_not_mistaken_for_geometry(source):
    assert find_geometry_literals(source) == []
