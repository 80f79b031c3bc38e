"""Which ranking score follows the model's error: each ``lesionseg rank`` score against 1 − Dice, per case.

    python benchmarks/rank_error_correlation.py [--seeds 7] [--start 4] [--pool 24] [--validation 5]
        [--initial-epochs 40] [--threads 1] [--work DIR] [--json OUT]

The first model an arm of ``benchmarks/active_learning.py`` ranks with, made the same way (its task, recipe, phantom
cohorts and initial training, imported from there), but on seeds that benchmark does not use (it uses 0 .. N-1), so
a method can be chosen here without looking at the benchmark's results.  Each pool case is segmented as
``lesionseg rank`` does (flip TTA) and scored by every method; its error is 1 − Dice of the predicted spleen against
the phantom's.  A score worth ranking by grows with the error; ``body_ml`` (voxels above −500 HU) is there to show
how much a score follows the body's size instead.  Printed: Pearson and Spearman correlations per seed (each seed
has its own model, and the ranking compares cases under one model) and over all cases; a correlation is undefined
(nan) where a score or the error is the same for every case, e.g. a model that finds the spleen in no case.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCORES = ("entropy", "mutual_information", "region_entropy", "lesion_count", "mean_entropy")


def score_pool(model: Path, cohort: Path, task: dict) -> list[dict]:
    """Each case of ``cohort``: its ranking scores, its Dice against the phantom's spleen and its body's volume."""
    import numpy as np

    from lesionseg.inference.pipeline import load_model
    from lesionseg.inference.progress import Progress
    from lesionseg.inference.ranking import case_scores
    from lesionseg.inference.uncertainty import segment_uncertain
    from lesionseg.io import read_image

    loaded = load_model(str(model), "cpu")
    lookup = np.zeros(256, np.uint8)
    for source, target in task["source_labels"].items():
        lookup[source] = target
    rows = []
    for case in sorted(p for p in cohort.iterdir() if (p / "image.nii.gz").is_file()):
        image = read_image(case / "image.nii.gz")
        truth = lookup[read_image(case / "label.nii.gz").array] != 0
        result = segment_uncertain(image, loaded, Progress(), threshold=loaded.spec.inference.threshold)
        predicted = result.labelmap.array != 0
        total = int(predicted.sum() + truth.sum())
        dice = 2.0 * float((predicted & truth).sum()) / total if total else 1.0
        body_ml = float((image.array > -500).sum()) * image.voxel_volume_mm3 / 1000.0
        rows.append({"case": case.name, **case_scores(result), "dice": round(dice, 4), "body_ml": round(body_ml, 1)})
        print(f"{case.name}: Dice {dice:.3f}, " + ", ".join(f"{k} {rows[-1][k]}" for k in SCORES), flush=True)
    return rows


def correlations(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per score: Pearson and Spearman r with the error (1 − Dice) and with the body's volume."""
    from scipy import stats

    error = [1.0 - row["dice"] for row in rows]
    body = [row["body_ml"] for row in rows]

    def defined(values: list[float], other: list[float], measure: Callable) -> float:
        if len(set(values)) < 2 or len(set(other)) < 2:
            return float("nan")
        return round(float(measure(values, other)[0]), 3)

    out = {}
    for key in SCORES:
        values = [float(row[key] or 0.0) for row in rows]
        out[key] = {
            "pearson_error": defined(values, error, stats.pearsonr),
            "spearman_error": defined(values, error, stats.spearmanr),
            "pearson_body": defined(values, body, stats.pearsonr),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[7], help="seeds, none of 0 .. N-1 of the benchmark")
    parser.add_argument("--start", type=int, default=4, help="labelled phantoms the model trains on")
    parser.add_argument("--pool", type=int, default=24, help="unlabelled phantoms to score")
    parser.add_argument("--validation", type=int, default=5, help="validation phantoms (the benchmark's)")
    parser.add_argument("--initial-epochs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--work", type=Path, help="keep phantoms, datasets and models here")
    parser.add_argument("--json", type=Path, help="write every case's scores and the correlations here")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT / "scripts"))

    import torch
    from active_learning import VALIDATION_SEED, demo_recipe, link_cases, machine, train_round
    from train_demo_models import build_dataset

    from lesionseg.data import SynthOptions, generate_cohort

    torch.set_num_threads(args.threads)
    task, config = demo_recipe()
    config["training"] = {**config["training"], "epochs": args.initial_epochs}
    config["validation"] = {**config["validation"], "interval": 1_000_000}
    config["model"] = {**config["model"], "id": "al-bench-spleen"}
    options = SynthOptions(size="small")
    rows = []
    with tempfile.TemporaryDirectory(prefix="lesionseg-rankerr-") as scratch:
        work = args.work or Path(scratch)
        (work / "cases").mkdir(parents=True, exist_ok=False)
        generate_cohort(work / "validation", args.validation, VALIDATION_SEED, options)
        validation = link_cases(work / "validation", "validation", work / "cases")
        for seed in args.seeds:
            folder = work / f"seed{seed}"
            generate_cohort(folder / "start", args.start, 10_000 + seed, options, overwrite=True)
            generate_cohort(folder / "pool", args.pool, 20_000 + seed, options, overwrite=True)
            start = link_cases(folder / "start", f"s{seed}-start", work / "cases")
            build_dataset(work / "cases", start + validation, folder / "dataset", task)
            seeded = {**config, "training": {**config["training"], "seed": seed}}
            initial = train_round(folder / "dataset", seeded, folder / "initial", start, validation)
            print(f"seed {seed}: initial model, validation Dice {initial['dice']:.3f}", flush=True)
            rows += [{"seed": seed, **row} for row in score_pool(folder / "initial", folder / "pool", task)]
    groups = {f"seed {seed}": [row for row in rows if row["seed"] == seed] for seed in args.seeds}
    groups["all seeds"] = rows
    found = {name: correlations(group) for name, group in groups.items()}
    for name, table in found.items():
        dice = sum(row["dice"] for row in groups[name]) / len(groups[name])
        print(f"\nCorrelation over {len(groups[name])} cases, {name} (mean Dice {dice:.3f})")
        print("| score | Pearson r with 1 − Dice | Spearman ρ with 1 − Dice | Pearson r with body mL |")
        print("|-------|------------------------:|-------------------------:|-----------------------:|")
        for key, figures in table.items():
            print(f"| {key} | {figures['pearson_error']:+.3f} | {figures['spearman_error']:+.3f} "
                  f"| {figures['pearson_body']:+.3f} |")  # fmt: skip
    facts = machine(args.threads)
    print(json.dumps({"machine": facts}))
    if args.json:
        report = {"arguments": {**vars(args), "work": str(args.work), "json": str(args.json)}, "machine": facts}
        args.json.write_text(json.dumps({**report, "cases": rows, "correlations": found}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
