"""benchmarks/active_learning.py (issue 19, rank against random), run as a real process with the smallest numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_active_learning_benchmark_writes_both_arms(tmp_path):
    work, report = tmp_path / "work", tmp_path / "figures.json"
    smallest = "--seeds 1 --rounds 1 --per-round 1 --start 2 --pool 2 --validation 1 --initial-epochs 1 --epochs 1"
    command = [sys.executable, str(ROOT / "benchmarks" / "active_learning.py"), *smallest.split()]
    command += ["--work", str(work), "--json", str(report)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "verdict:" in done.stdout

    figures = json.loads(report.read_text(encoding="utf-8"))
    rounds = figures["seeds"][0]["rounds"]
    assert [row["round"] for row in rounds] == [0, 1]
    assert [row["labelled"] for row in rounds] == [2, 3]
    for row in rounds:
        for arm in ("rank", "random"):
            assert 0.0 <= row[arm]["dice"] <= 1.0, row
    last = rounds[-1]
    pool = {f"s0-pool-case{n:03d}" for n in (1, 2)}
    assert len(last["random"]["chosen"]) == 1 and set(last["random"]["chosen"]) <= pool
    # The rank arm took the top case of the ranking `lesionseg rank`'s engine wrote for the whole pool.
    ranking = json.loads((work / "seed0" / "ranking-round1" / "ranking.json").read_text(encoding="utf-8"))
    assert {row["case"] for row in ranking["cases"]} == pool
    assert ranking["method"] == "entropy"
    assert last["rank"]["chosen"] == [ranking["cases"][0]["case"]]
    # Each arm's round fine-tuned on its start cases and its choice, and was validated on the validation case.
    for arm in ("rank", "random"):
        split = json.loads((work / "seed0" / f"model-{arm}-round1" / "split.json").read_text(encoding="utf-8"))
        assert split["train"] == sorted(["s0-start-case001", "s0-start-case002", *last[arm]["chosen"]])
        assert split["validation"] == ["validation-case001"]
    summary = figures["summary"]
    assert [row["round"] for row in summary] == [0, 1]
    assert summary[1]["difference"] == pytest.approx(summary[1]["rank"] - summary[1]["random"], abs=2e-4)
    assert isinstance(figures["rank_at_least_random"], bool)
