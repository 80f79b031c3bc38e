"""Start-up time of the command line: ``lesionseg --help``, ``segment --help``, and ``segment`` up to its first event.

    python benchmarks/startup.py [--repeat 7] [--tree OTHER_CHECKOUT_ROOT]

Each figure is the wall time of a fresh ``python -m lesionseg`` process (best and median of ``--repeat``), and the
import time that ``-X importtime`` adds up for the same command. With ``--tree``, another checkout's engine (e.g.
the commit before a change) is measured too, alternating with this one so that machine load falls on both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def first_line_seconds(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=cwd)
    process.stdout.readline()
    elapsed = time.perf_counter() - started
    process.kill()
    process.wait()
    return elapsed


def import_seconds(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    """Sum of the top-level cumulative times that ``-X importtime`` reports (site and encodings excluded)."""
    done = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], capture_output=True, text=True, env=env, cwd=cwd)
    total = 0
    for line in done.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            name = parts[2]
            if len(name) - len(name.lstrip()) == 1 and name.strip() not in ("site", "encodings"):
                total += int(parts[1])
    return total / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--tree", help="another checkout root whose lesionseg/ to measure beside this one")
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT / "Testing"), str(ROOT)]  # the tiny model is the self-test one, in LesionSegLib
    from support.tiny_models import phantom_ct, threshold_spec_dict, threshold_state, write_model_folder

    from lesionseg.io import write_image

    work = Path(tempfile.mkdtemp(prefix="lesionseg-startup-"))
    model = write_model_folder(work / "model", threshold_spec_dict(spacing=None, roi=(48, 48, 48)), threshold_state())
    ct = write_image(phantom_ct(), work / "ct.nii.gz")
    py = [sys.executable, "-m", "lesionseg"]
    commands = {
        "lesionseg --help": [*py, "--help"],
        "lesionseg segment --help": [*py, "segment", "--help"],
        "segment, first event": [
            *py, "segment", "--model", str(model), "--input", str(ct), "--output", str(work / "out.nii.gz"),
            "--overwrite", "--progress", "jsonl",
        ],
    }  # fmt: skip
    trees = {"this tree": ROOT} | ({"other tree": Path(args.tree).resolve()} if args.tree else {})
    walls: dict[tuple[str, str], list[float]] = {}
    imports: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeat):
        for tree_name, tree in trees.items():
            env = dict(os.environ, PYTHONPATH=str(tree))  # and run there: python -m puts the cwd first
            for name, argv in commands.items():
                walls.setdefault((tree_name, name), []).append(first_line_seconds(argv, env, tree))
                imports.setdefault((tree_name, name), []).append(import_seconds(argv, env, tree))
    for (tree_name, name), times in walls.items():
        row = {
            "tree": tree_name,
            "command": name,
            "wall_best_s": round(min(times), 3),
            "wall_median_s": round(statistics.median(times), 3),
            "imports_best_s": round(min(imports[tree_name, name]), 3),
        }
        print(json.dumps(row))


if __name__ == "__main__":
    main()
