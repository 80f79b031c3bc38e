"""benchmarks/rank_error_correlation.py (issue 19: which ranking score follows the error), run with the smallest
numbers as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_rank_error_correlation_scores_every_pool_case_by_every_method(tmp_path):
    report = tmp_path / "figures.json"
    smallest = "--seeds 99 --start 2 --pool 3 --validation 1 --initial-epochs 1"
    command = [sys.executable, str(ROOT / "benchmarks" / "rank_error_correlation.py"), *smallest.split()]
    command += ["--work", str(tmp_path / "work"), "--json", str(report)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| region_entropy |" in done.stdout

    figures = json.loads(report.read_text(encoding="utf-8"))
    assert [row["case"] for row in figures["cases"]] == ["case001", "case002", "case003"]
    for row in figures["cases"]:
        assert 0.0 <= row["dice"] <= 1.0 and row["body_ml"] > 0 and row["entropy"] > 0, row
        # Per voxel it cannot exceed the entropy of two equally likely classes.
        assert 0.0 <= row["region_entropy"] <= 0.6932, row
    assert set(figures["correlations"]) == {"seed 99", "all seeds"}
    assert set(figures["correlations"]["seed 99"]) == {"entropy", "mutual_information", "region_entropy",
                                                       "lesion_count", "mean_entropy"}  # fmt: skip
