"""The modules' self-tests report honestly: a scenario that cannot run is skipped (``self.skipTest(reason)``),
never passed by returning early, and "Reload and Test" goes on to the next scenario after a skip."""

from __future__ import annotations

import ast
import io
import os
import subprocess
import textwrap
import unittest

import pytest
from support.slicer_modules import MODULES, REPO, classes, parse_module

from LesionSegLib.selftest import run_scenarios


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


SELFTESTS = REPO / "Testing" / "run_slicer_selftests.sh"


def _stand_in_slicer(tmp_path):
    """A stand-in for the Slicer launcher (the app cannot run here): it records the arguments it is given."""
    record = tmp_path / "arguments.txt"
    launcher = tmp_path / "Slicer"
    launcher.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "{record}"\n', encoding="utf-8")
    launcher.chmod(0o755)
    return launcher, record


def _run_selftests(tmp_path, slicerrt_paths: str | None) -> tuple[subprocess.CompletedProcess, list[str]]:
    launcher, record = _stand_in_slicer(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "SLICERRT_MODULE_PATHS"}
    env.update({"SLICER_EXECUTABLE": str(launcher), "DISPLAY": ":0"})
    if slicerrt_paths is not None:
        env["SLICERRT_MODULE_PATHS"] = slicerrt_paths
    done = subprocess.run(
        ["bash", str(SELFTESTS), "ProstateMetSeg"], capture_output=True, text=True, env=env, timeout=60
    )
    arguments = record.read_text(encoding="utf-8").splitlines() if record.exists() else []
    return done, arguments


def _module_paths(arguments: list[str]) -> list[str]:
    start = arguments.index("--additional-module-paths") + 1
    end = arguments.index("--python-code")
    return arguments[start:end]


def test_selftest_runner_loads_slicerrt_from_the_folders_given(tmp_path):
    """--testing runs Slicer with temporary settings, so an installed SlicerRT is on the module path only when
    the runner passes its folders."""
    loadable, scripted = tmp_path / "qt-loadable-modules", tmp_path / "qt scripted-modules"
    loadable.mkdir()
    scripted.mkdir()
    done, arguments = _run_selftests(tmp_path, f"{loadable};{scripted}")
    assert done.returncode == 0, done.stderr
    assert "--testing" in arguments
    paths = _module_paths(arguments)
    assert paths[-2:] == [str(loadable), str(scripted)]
    assert [p.rsplit("/", 1)[-1] for p in paths[:3]] == ["SpleenSeg", "ProstateMetSeg", "LesionSegTraining"]
    assert "SlicerRT export scenario runs" in done.stdout


def test_selftest_runner_without_slicerrt_says_the_route_is_not_covered(tmp_path):
    done, arguments = _run_selftests(tmp_path, None)
    assert done.returncode == 0, done.stderr
    assert len(_module_paths(arguments)) == 3
    assert "SlicerRT export scenario is skipped (that route is not covered)" in done.stdout


def test_selftest_runner_refuses_a_slicerrt_folder_that_does_not_exist(tmp_path):
    done, arguments = _run_selftests(tmp_path, str(tmp_path / "no-such-folder"))
    assert done.returncode == 2 and arguments == []
    assert "no-such-folder, which is not a folder" in done.stderr
