"""The modules' self-tests report honestly: a scenario that cannot run is skipped (``self.skipTest(reason)``),
never passed by returning early, and "Reload and Test" goes on to the next scenario after a skip."""

from __future__ import annotations

import ast
import io
import sys
import textwrap
import unittest

import pytest
from support.slicer_modules import MODULES, REPO, classes, parse_module

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # LesionSegLib lives in the repository root, beside the modules

from LesionSegLib.selftest import run_scenarios  # noqa: E402


def _own_nodes(function: ast.FunctionDef):
    """The nodes of ``function``'s body, not those of functions or classes defined inside it."""
    pending = list(function.body)
    while pending:
        node = pending.pop()
        yield node
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            pending.extend(ast.iter_child_nodes(node))


def early_exits(source: str) -> list[str]:
    """'Class.method:line' for each self-test scenario that returns, or says "Skipped" instead of skipping."""
    found = []
    for cls in classes(ast.parse(source)).values():
        if not cls.name.endswith("Test"):
            continue
        for function in cls.body:
            if not isinstance(function, ast.FunctionDef) or not function.name.startswith("test"):
                continue
            for node in _own_nodes(function):
                says_skipped = (
                    isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("Skipped")
                ) or (isinstance(node, ast.JoinedStr) and ast.unparse(node).startswith(("f'Skipped", 'f"Skipped')))
                if isinstance(node, ast.Return) or says_skipped:
                    found.append(f"{cls.name}.{function.name}:{node.lineno}")
    return sorted(set(found))  # an f-string and its first part share a line


@pytest.mark.parametrize("module", MODULES)
def test_no_self_test_scenario_returns_early_instead_of_skipping(module):
    source = (REPO / module / f"{module}.py").read_text(encoding="utf-8")
    exits = early_exits(source)
    assert not exits, f"call self.skipTest(reason) rather than returning (counted as passed): {exits}"
    assert not [c for c in classes(parse_module(module)) if c.endswith("Test") and c != f"{module}Test"]


def test_the_check_catches_a_scenario_that_returns_as_the_old_self_tests_did():
    old = textwrap.dedent(
        """
        class SpleenSegTest(ScriptedLoadableModuleTest):
            def test_segmenting(self):
                if segmenting.missing_requirements():
                    self.delayDisplay(f"Skipped: this Slicer lacks {segmenting.missing_requirements()}")
                    return
                def helper():
                    return 1  # a nested helper may return
                self.assertTrue(helper())

            def test_skipping(self):
                if segmenting.missing_requirements():
                    self.skipTest("this Slicer lacks torch")

        class SpleenSegWidget:
            def test_like_name(self):
                return None  # not a self-test class
        """
    )
    assert early_exits(old) == ["SpleenSegTest.test_segmenting:5", "SpleenSegTest.test_segmenting:6"]


class _Scenarios(unittest.TestCase):
    """A self-test class as the modules write them: setUp clears, runTest hands the scenarios over."""

    __test__ = False  # driven by the tests below, not collected by pytest

    def __init__(self) -> None:
        super().__init__("runTest")
        self.log: list[str] = []

    def setUp(self) -> None:
        self.log.append("setUp")

    def tearDown(self) -> None:
        self.log.append("tearDown")

    def runTest(self) -> None:
        pass

    def test_first(self) -> None:
        self.log.append("first")

    def test_cannot_run_here(self) -> None:
        self.skipTest("this Slicer lacks torch")

    def test_last(self) -> None:
        self.log.append("last")

    def test_broken(self) -> None:
        self.assertEqual(1, 2)


def test_reload_and_test_runs_on_past_a_skipped_scenario_and_says_why():
    case, said = _Scenarios(), []
    skipped = run_scenarios(case, ["test_first", "test_cannot_run_here", "test_last"], said.append)
    assert skipped == ["test_cannot_run_here"]
    assert said == ["Skipped test_cannot_run_here: this Slicer lacks torch"]
    assert case.log == ["setUp", "first", "tearDown", "setUp", "tearDown", "setUp", "last", "tearDown"]


def test_a_failing_scenario_still_fails_reload_and_test():
    case = _Scenarios()
    with pytest.raises(AssertionError):
        run_scenarios(case, ["test_first", "test_broken", "test_last"], lambda _m: None)
    assert "last" not in case.log and case.log[-1] == "tearDown"


def test_slicers_unittest_runner_counts_a_skipped_scenario_as_skipped_not_passed():
    """slicer.testing.runUnitTest loads the Test class with unittest and runs each test_* method."""

    class Module(unittest.TestCase):
        def test_cannot_run_here(self) -> None:
            self.skipTest("this Slicer lacks torch")

    result = unittest.TextTestRunner(stream=io.StringIO()).run(unittest.TestLoader().loadTestsFromTestCase(Module))
    assert result.wasSuccessful() and len(result.skipped) == 1 and result.testsRun == 1
