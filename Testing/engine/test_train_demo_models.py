"""scripts/train_demo_models.py: a short real run, and the operating threshold it writes only for its own recipe."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "train_demo_models.py"


def _script():
    spec = importlib.util.spec_from_file_location("train_demo_models", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_changed_recipe_gets_no_threshold_chosen_for_other_weights(tmp_path):
    command = [sys.executable, str(SCRIPT), "--only", "demo-lesion", "--cases", "6", "--epochs", "1", "--threads", "1"]
    command += ["--work", str(tmp_path / "work"), "--models-out", str(tmp_path / "models")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no operating threshold written" in done.stdout and "--seed 5353" in done.stdout

    folder = tmp_path / "models" / "demo-lesion"
    spec = json.loads((folder / "spec.json").read_text(encoding="utf-8"))
    assert "threshold" not in spec["inference"]  # 6 phantoms and 1 epoch are not the weights 0.8 was chosen for
    assert spec["postprocessing"]["min_component_mm3"] == 100.0
    assert "--cases 6 --seed 2026" in (folder / "model-card.md").read_text(encoding="utf-8")


def test_the_own_recipe_writes_its_threshold_into_a_valid_spec(tmp_path):
    from lesionseg.models.spec import load_spec

    script = _script()
    task = script.TASKS["demo-lesion"]
    folder = tmp_path / "demo-lesion"
    shutil.copytree(ROOT / "lesionseg" / "resources" / "models" / "demo-lesion", folder)
    spec = json.loads((folder / "spec.json").read_text(encoding="utf-8"))
    spec["inference"].pop("threshold", None)  # as training writes it
    (folder / "spec.json").write_text(json.dumps(spec), encoding="utf-8")

    script.set_postprocessing_and_threshold(folder, task["postprocessing"], task["threshold"])
    loaded = load_spec(folder / "spec.json")
    assert loaded.inference.threshold == task["threshold"] == 0.8
    # The shipped spec is what the script's own recipe writes: same version, threshold and post-processing.
    shipped = load_spec(ROOT / "lesionseg" / "resources" / "models" / "demo-lesion" / "spec.json")
    assert shipped.version == task["config"]["model"]["version"]
    assert shipped.inference.threshold == loaded.inference.threshold
    assert shipped.postprocessing == loaded.postprocessing
