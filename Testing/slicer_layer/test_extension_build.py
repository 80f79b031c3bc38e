"""The extension's build description (CMake lists as Slicer's extension wizard lays them out), its icons,
and the self-test runner script."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from support.slicer_modules import ENGINE, MODULES, REPO, cmake_commands, cmake_variables, module_dir

ICONS = [REPO / "Resources" / "Icons" / "LesionSeg.png"] + [
    module_dir(m) / "Resources" / "Icons" / f"{m}.png" for m in MODULES
]


def _listed_files(module: str) -> set[str]:
    variables = cmake_variables(module_dir(module) / "CMakeLists.txt")
    return set(variables.get("MODULE_PYTHON_SCRIPTS", []) + variables.get("MODULE_PYTHON_RESOURCES", []))


@pytest.mark.parametrize("module", MODULES)
def test_module_cmake_lists_name_existing_files_only(module):
    variables = cmake_variables(module_dir(module) / "CMakeLists.txt")
    assert variables["MODULE_NAME"] == [module], "MODULE_NAME must match the folder and the .py file"
    for relative in _listed_files(module):
        path = module_dir(module) / relative
        assert path.is_file() or path.with_name(path.name + ".py").is_file(), f"{module}/CMakeLists.txt: {relative}"


@pytest.mark.parametrize("module", MODULES)
def test_every_module_file_is_installed(module):
    listed = _listed_files(module)
    for path in module_dir(module).rglob("*"):
        if path.suffix in (".py", ".ui", ".png") and "__pycache__" not in path.parts:
            relative = path.relative_to(module_dir(module)).as_posix()
            assert relative in listed, f"{module}/{relative} is not in {module}/CMakeLists.txt, so Slicer would lack it"


@pytest.mark.parametrize("module", MODULES)
def test_module_cmake_follows_the_scripted_module_template(module):
    commands = cmake_commands(module_dir(module) / "CMakeLists.txt")
    build = [args for name, args in commands if name == "slicerMacroBuildScriptedModule"]
    assert len(build) == 1 and "WITH_GENERIC_TESTS" in build[0]
    assert ["SCRIPT", "${MODULE_NAME}.py"] in [args for name, args in commands if name == "slicer_add_python_unittest"]
    text = (module_dir(module) / "CMakeLists.txt").read_text(encoding="utf-8")
    testing_block = text[text.index("if(BUILD_TESTING)") : text.index("endif()")]
    assert "slicer_add_python_unittest" in testing_block and "add_subdirectory(Testing)" in testing_block
    assert ("add_subdirectory", ["Python"]) in cmake_commands(module_dir(module) / "Testing" / "CMakeLists.txt")
    assert (module_dir(module) / "Testing" / "Python" / "CMakeLists.txt").is_file()


def test_extension_cmake_has_the_wizard_layout_and_metadata():
    path = REPO / "CMakeLists.txt"
    variables = cmake_variables(path)
    assert variables["EXTENSION_CATEGORY"] == ["Segmentation"]
    assert variables["EXTENSION_CONTRIBUTORS"] and variables["EXTENSION_DEPENDS"] == ["NA"]
    description = " ".join(variables["EXTENSION_DESCRIPTION"])
    assert "SlicerRT" in description and "PyTorch" in description and "optional" in description
    # The URLs are checked as CMake computes them, in test_extension_urls_name_files_that_exist.

    commands = [(name, args) for name, args in cmake_commands(path)]
    names = [name for name, _ in commands]
    assert names[:2] == ["cmake_minimum_required", "project"]
    assert ("find_package", ["Slicer", "REQUIRED"]) in commands
    assert names.index("find_package") < names.index("add_subdirectory")
    assert commands[-2:] == [
        ("include", ["${Slicer_EXTENSION_GENERATE_CONFIG}"]),
        ("include", ["${Slicer_EXTENSION_CPACK}"]),
    ]
    subdirectories = [args[0] for name, args in commands if name == "add_subdirectory"]
    assert subdirectories == ["lesionseg", "LesionSegLib", *MODULES], (
        "the engine first, then the shared LesionSegLib, then one line per module"
    )
    for folder in subdirectories:
        assert (REPO / folder / "CMakeLists.txt").is_file()


# Organisations and hosts that only stand in for a real one.
PLACEHOLDERS = ("lesionseg/SlicerLesionSeg", "github.com/lesionseg", "example.com", "your-org", "<owner>")


def _extension_metadata(tmp_path, *definitions: str) -> dict[str, str]:
    """The EXTENSION_* values the top CMakeLists.txt sets, computed by real CMake (script mode) on its
    meta-information block; the rest of the file needs the Slicer SDK."""
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    block = text[text.index("# Extension meta-information") : text.index("# Extension dependencies")]
    names = ("EXTENSION_HOMEPAGE", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS")
    script = tmp_path / "metadata.cmake"
    script.write_text(
        f'set(CMAKE_CURRENT_SOURCE_DIR "{REPO.as_posix()}")\n'
        + block
        + "".join(f'message(STATUS "{name}=${{{name}}}")\n' for name in names),
        encoding="utf-8",
    )
    command = ["cmake", *(f"-D{d}" for d in definitions), "-P", str(script)]
    result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60)
    return dict(re.findall(r"-- (EXTENSION_\w+)=(.*)", result.stdout))


def _repository_file(url: str, files_url: str) -> Path:
    assert url.startswith(files_url + "/"), f"{url} is not under {files_url}"
    return REPO / url[len(files_url) + 1 :]


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_extension_urls_name_files_that_exist(tmp_path):
    # No public host yet: the homepage and the icon are this source tree's own files.
    local = _extension_metadata(tmp_path)
    files_url = f"file://{REPO.as_posix()}"
    assert local["EXTENSION_HOMEPAGE"] == f"{files_url}/README.md"
    urls = [local["EXTENSION_HOMEPAGE"], local["EXTENSION_ICONURL"], *local["EXTENSION_SCREENSHOTURLS"].split()]
    for url in urls:
        assert _repository_file(url, files_url).is_file(), f"{url} names a file that does not exist"
    assert _repository_file(local["EXTENSION_ICONURL"], files_url) == REPO / "Resources" / "Icons" / "LesionSeg.png"

    # Published: every URL follows the address given, and names a file this repository holds.
    public = _extension_metadata(tmp_path, "LESIONSEG_PUBLIC_URL=https://github.com/someone/SlicerLesionSeg")
    assert public["EXTENSION_HOMEPAGE"] == "https://github.com/someone/SlicerLesionSeg"
    raw = "https://github.com/someone/SlicerLesionSeg/raw/main"
    for url in [public["EXTENSION_ICONURL"], *public["EXTENSION_SCREENSHOTURLS"].split()]:
        assert _repository_file(url, raw).is_file(), f"{url} names a file the repository lacks"

    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    for value in (*local.values(), *[line for line in text.splitlines() if not line.lstrip().startswith("#")]):
        assert not any(p in value for p in PLACEHOLDERS), f"a placeholder address: {value}"


def test_engine_is_installed_as_a_package_beside_the_modules():
    commands = cmake_commands(ENGINE / "CMakeLists.txt")
    build = [args for name, args in commands if name == "slicerMacroBuildScriptedModule"]
    assert len(build) == 1
    # WITH_SUBDIR installs into qt-scripted-modules/<folder name>; the modules import that name.
    assert "WITH_SUBDIR" in build[0] and "WITH_GENERIC_TESTS" not in build[0]
    assert cmake_variables(ENGINE / "CMakeLists.txt")["MODULE_NAME"] == [ENGINE.name] == ["lesionseg"]


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_engine_file_globs_pick_every_package_file_and_nothing_else(tmp_path):
    # Run the list-building part of lesionseg/CMakeLists.txt in real CMake (script mode) and compare
    # with the files on disk. The Slicer macro call is cut off (it needs the Slicer SDK), and so is
    # CONFIGURE_DEPENDS, which only a configure step accepts.
    text = (ENGINE / "CMakeLists.txt").read_text(encoding="utf-8")
    lists_part = text[: text.index("slicerMacroBuildScriptedModule(")].replace("CONFIGURE_DEPENDS", "")
    script = tmp_path / "globs.cmake"
    script.write_text(
        f'set(CMAKE_CURRENT_SOURCE_DIR "{ENGINE.as_posix()}")\n'
        + lists_part
        + 'message(STATUS "SCRIPTS=${MODULE_PYTHON_SCRIPTS}")\n'
        + 'message(STATUS "RESOURCES=${MODULE_PYTHON_RESOURCES}")\n',
        encoding="utf-8",
    )
    result = subprocess.run(["cmake", "-P", str(script)], capture_output=True, text=True, check=True, timeout=60)
    lists = dict(re.findall(r"-- (SCRIPTS|RESOURCES)=(.*)", result.stdout))
    scripts = set(filter(None, lists["SCRIPTS"].split(";")))
    resources = set(filter(None, lists["RESOURCES"].split(";")))

    on_disk = {p.relative_to(ENGINE).as_posix() for p in ENGINE.rglob("*.py") if "__pycache__" not in p.parts}
    assert scripts == on_disk
    data = {
        p.relative_to(ENGINE).as_posix()
        for p in (ENGINE / "resources").rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    }
    assert resources == data
    assert not scripts & resources


@pytest.mark.parametrize("path", ICONS, ids=lambda p: p.name)
def test_icons_are_128_pixel_pngs(path):
    with PILImage.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (128, 128)


def test_icon_script_redraws_the_committed_icons(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import make_icons
    finally:
        sys.path.remove(str(REPO / "scripts"))
    assert make_icons.main(["--out", str(tmp_path)]) == 0
    for committed in ICONS:
        drawn = tmp_path / committed.relative_to(REPO)
        a = np.asarray(PILImage.open(committed).convert("RGBA"), dtype=np.int16)
        b = np.asarray(PILImage.open(drawn).convert("RGBA"), dtype=np.int16)
        # Another matplotlib release may anti-alias a few edge pixels differently, nothing more.
        assert np.abs(a - b).mean() < 1.0, f"{committed.name} differs from what scripts/make_icons.py draws"
    # The four pictograms are distinct drawings, not one image copied.
    pictures = [np.asarray(PILImage.open(p).convert("RGB"), dtype=np.int16) for p in ICONS]
    for i in range(len(pictures)):
        for j in range(i + 1, len(pictures)):
            assert np.abs(pictures[i] - pictures[j]).mean() > 5


SELFTESTS = REPO / "Testing" / "run_slicer_selftests.sh"


def _run_selftests(env_changes: dict[str, str | None], *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SLICER_EXECUTABLE"}
    env.update({k: v for k, v in env_changes.items() if v is not None})
    return subprocess.run(["bash", str(SELFTESTS), *args], capture_output=True, text=True, env=env, timeout=30)


def test_selftest_runner_is_valid_bash_and_executable():
    assert os.access(SELFTESTS, os.X_OK)
    subprocess.run(["bash", "-n", str(SELFTESTS)], check=True, timeout=30)


def test_selftest_runner_without_slicer_says_what_to_set():
    result = _run_selftests({})
    assert result.returncode == 2
    assert "SLICER_EXECUTABLE is not set" in result.stderr


def test_selftest_runner_refuses_a_missing_slicer_and_an_unknown_module(tmp_path):
    result = _run_selftests({"SLICER_EXECUTABLE": str(tmp_path / "Slicer")})
    assert result.returncode == 2 and "not an executable file" in result.stderr
    result = _run_selftests({"SLICER_EXECUTABLE": shutil.which("true")}, "NoSuchModule")
    assert result.returncode == 2 and "no module named NoSuchModule" in result.stderr


def _python_files_slicer_loads_as_modules(folder: Path) -> list[str]:
    # qSlicerScriptedLoadableModuleFactory::isValidFile accepts every *.py file directly in a module path
    # (ctkAbstractFileBasedFactory lists the folder's files, not its subfolders), and loads each as a module.
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".py")


def test_readme_install_step_adds_only_folders_whose_python_files_are_modules():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Installing into 3D Slicer") :]
    section = section[: section.index("\n## ", 3)]
    step = next(item for item in section.split("\n- ") if "Additional module paths" in item)
    to_add = step[: step.index("(nothing else)")]
    folders = [name for name in re.findall(r"`([^`]+)`", to_add) if (REPO / name).is_dir()]
    assert folders == list(MODULES), f"the README adds {folders} as module paths"
    for folder in folders:
        assert _python_files_slicer_loads_as_modules(REPO / folder) == [f"{folder}.py"]
        source = (REPO / folder / f"{folder}.py").read_text(encoding="utf-8")
        assert f"class {folder}(ScriptedLoadableModule):" in source
        # Without the extension's install tree, the module finds LesionSegLib and the engine in the checkout.
        assert "sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))" in source
    # Why LesionSegLib must not be added: each of its files would be taken for a module and fail to load.
    assert len(_python_files_slicer_loads_as_modules(REPO / "LesionSegLib")) > 5
    assert "Do not add `LesionSegLib`" in step
