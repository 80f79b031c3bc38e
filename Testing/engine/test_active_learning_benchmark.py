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
def test_active_learning_benchmark_writes_every_arm(tmp_path):
    work, report = tmp_path / "work", tmp_path / "figures.json"
    smallest = "--seeds 2 --first-seed 3 --jobs 2 --rounds 1 --per-round 1 --start 2 --pool 2 --validation 1"
    smallest += " --initial-epochs 1 --epochs 1"
    command = [sys.executable, str(ROOT / "benchmarks" / "active_learning.py"), *smallest.split()]
    command += ["--method", "entropy,least_foreground", "--work", str(work), "--json", str(report)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "verdict: entropy:" in done.stdout and "verdict: least_foreground:" in done.stdout

    figures = json.loads(report.read_text(encoding="utf-8"))
    # Both seeds (3 and 4: --first-seed, for a replication on seeds not run before) came back from their workers.
    assert [s["seed"] for s in figures["seeds"]] == [3, 4]
    arms = ("entropy", "least_foreground", "random")
    for index, seed in enumerate((3, 4)):
        rounds = figures["seeds"][index]["rounds"]
        assert [row["round"] for row in rounds] == [0, 1]
        assert [row["labelled"] for row in rounds] == [2, 3]
        for row in rounds:
            for arm in arms:
                assert 0.0 <= row[arm]["dice"] <= 1.0, row
        last = rounds[-1]
        pool = {f"s{seed}-pool-case{n:03d}" for n in (1, 2)}
        assert len(last["random"]["chosen"]) == 1 and set(last["random"]["chosen"]) <= pool
        for method in arms[:2]:
            # Each ranked arm took the top case of the ranking `lesionseg rank`'s engine wrote for the whole pool.
            folder = work / f"seed{seed}" / f"ranking-{method}-round1"
            ranking = json.loads((folder / "ranking.json").read_text(encoding="utf-8"))
            assert {row["case"] for row in ranking["cases"]} == pool
            assert ranking["method"] == method
            assert last[method]["chosen"] == [ranking["cases"][0]["case"]]
        # Each arm's round fine-tuned on its start cases and its choice, and was validated on the validation case.
        for arm in arms:
            split = json.loads((work / f"seed{seed}" / f"model-{arm}-round1" / "split.json").read_text("utf-8"))
            start = [f"s{seed}-start-case001", f"s{seed}-start-case002"]
            assert split["train"] == sorted([*start, *last[arm]["chosen"]])
            assert split["validation"] == ["validation-case001"]
    for method in arms[:2]:
        summary = figures["summary"][method]
        assert [row["round"] for row in summary] == [0, 1]
        mean = sum(figures["seeds"][index]["rounds"][1][method]["dice"] for index in (0, 1)) / 2
        assert summary[1]["rank"] == pytest.approx(mean, abs=2e-4)
        assert summary[1]["difference"] == pytest.approx(summary[1]["rank"] - summary[1]["random"], abs=2e-4)
        assert figures["rank_at_least_random"][method] == (summary[1]["difference"] >= 0)


def test_active_learning_benchmark_refuses_a_negative_first_seed_before_any_work(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "active_learning.py"), "--first-seed", "-1"]
    command += ["--work", str(tmp_path / "work")]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert done.returncode == 2 and "--first-seed -1: give at least one seed, from 0 up" in done.stderr, done.stderr
    assert not (tmp_path / "work").exists()  # refused before a phantom was drawn
