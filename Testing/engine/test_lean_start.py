"""A lean start: the command line registers its commands without torch, MONAI or the readers, and running one
command imports that command's module only."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "monai", "scipy", "pydicom", "SimpleITK", "nibabel", "skimage")


def imported_after(code: str) -> dict:
    script = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    modules = json.loads(done.stdout.splitlines()[-1])
    return {
        "heavy": sorted({m.split(".")[0] for m in modules} & set(HEAVY)),
        "commands": sorted(m for m in modules if m.startswith("lesionseg.commands.")),
        "numpy": "numpy" in modules,
    }


def test_building_the_whole_parser_imports_neither_torch_nor_monai():
    seen = imported_after("import lesionseg.cli\nlesionseg.cli.build_parser()")
    assert "torch" not in seen["heavy"] and "monai" not in seen["heavy"], seen
    assert len(seen["commands"]) == len(__import__("lesionseg.cli").cli.COMMAND_MODULES)


def test_segment_registers_only_its_own_command_and_imports_no_heavy_package():
    seen = imported_after("import lesionseg.cli\nlesionseg.cli.build_parser(['segment', '--model', 'm'])")
    assert seen == {"heavy": [], "commands": ["lesionseg.commands.segment"], "numpy": False}


def test_segment_help_still_lists_its_options_and_top_help_lists_every_command():
    def run(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "lesionseg", *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "--crop-body" in run("segment", "--help") and "--threshold" in run("-v", "segment", "--help")
    listing = run("--help")
    for name in json.loads(
        subprocess.run(
            [sys.executable, "-c", "import json, lesionseg.cli as c; print(json.dumps(c.COMMAND_MODULES))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    ):
        assert name.rsplit(".", 1)[1] in listing


def test_an_unknown_command_is_refused_with_the_list_of_commands():
    done = subprocess.run([sys.executable, "-m", "lesionseg", "segmnt"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "invalid choice: 'segmnt'" in done.stderr and "segment" in done.stderr
