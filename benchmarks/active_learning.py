"""Which case next: cases chosen by ``lesionseg rank`` against cases chosen at random, on synthetic phantoms.

    python benchmarks/active_learning.py [--seeds 3] [--first-seed 0] [--rounds 3] [--per-round 4] [--start 4]
        [--pool 48] [--validation 5] [--initial-epochs 40] [--epochs 5] [--threads 1] [--jobs 1]
        [--method entropy[,mutual_information,...]] [--work DIR] [--json OUT]

The demo-spleen task of ``scripts/train_demo_models.py`` (its labels, network and recipe, imported from there),
on computed CT phantoms from the project's generator (``lesionseg synth --size small``): per seed a small labelled
start set and a pool of unlabelled phantoms, and one validation set shared by every seed, each cohort drawn from
its own generator seed.  Spleen, not lesions: it was built while the lesion model did not learn (issue 18).

Per seed an initial model is trained on the start set.  Then the arms go on from it for ``--rounds`` rounds, each
adding ``--per-round`` pool cases to its labelled set and training again:

* one arm per ranking method of ``--method`` (a comma-separated list, so several methods meet the same random arm in
  one run): the pool cases left, ranked by the previous round's model of this arm with the engine function that
  ``lesionseg rank`` runs (``lesionseg.inference.ranking.rank_cases``), most uncertain first;
* random: the same number drawn from the pool cases left (a generator seeded per seed).

Every training runs ``lesionseg.training.train``, what ``lesionseg train`` runs.  The initial one trains from
scratch for ``--initial-epochs`` (seeded per seed); each round then fine-tunes the arm's previous model for
``--epochs`` more epochs on its grown labelled set: ``lesionseg train --resume --new-split`` on a copy of the
previous round's folder, so optimiser, schedule and random state go on as in one run.  Fine-tuned, not trained
from scratch, for want of time: on one CPU thread a from-scratch training per round that fits the ~40 minute budget
(21 trainings) is some 40 steps long, and such a model has a validation Dice of 0.000 (measured), so neither the
ranking nor the comparison would mean anything.  Fine-tuning lets every round build on the last, as an annotation
loop does; both arms of a round have had the same number of epochs on the same number of cases, so they still
differ only in which cases they were given (an epoch is one pass over the labelled cases, so later rounds train
more steps, the same in both arms).  Validation runs on the last epoch of each training only (the interval is set
beyond the run), so a round's Dice is that of its final weights, and the ranking uses those weights too: no
checkpoint is picked on the validation set.

Printed per seed and round: labelled cases, the mean validation Dice of every arm and the cases each chose; then,
per method, the mean over seeds per round, the difference method − random, and whether the method is at least as
good as random at the last round.  ``--jobs`` runs that many seeds at once, each in its own process (each with
``--threads`` torch threads).  ``--json`` writes every figure; ``--work`` keeps the phantoms, datasets, models and
rankings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASK = "demo-spleen"
RANDOM = "random"
VALIDATION_SEED = 90_000  # the validation phantoms; start and pool phantoms use 10_000 + seed and 20_000 + seed


def demo_recipe() -> tuple[dict, dict]:
    """(the task, its training config) as scripts/train_demo_models.py trains the shipped demo-spleen model."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import train_demo_models as demo

    task = demo.TASKS[TASK]
    return task, demo._merge(demo.COMMON, task["config"])


def link_cases(cohort: Path, prefix: str, cases: Path) -> list[str]:
    """Put a cohort's cases into ``cases`` under names unique across cohorts; returns those names."""
    names = []
    for case in sorted(p for p in cohort.iterdir() if (p / "image.nii.gz").is_file()):
        name = f"{prefix}-{case.name}"
        (cases / name).symlink_to(case.resolve(), target_is_directory=True)
        names.append(name)
    return names


def set_split(dataset: Path, train: list[str], validation: list[str]) -> None:
    """Train on ``train`` and validate on ``validation``; the dataset's other cases (the pool left) are unused."""
    from lesionseg.datasets import Dataset

    store = Dataset(dataset)
    with store.lock():
        doc = store.description()
        rest = sorted(set(store.active_cases()) - set(train) - set(validation))
        doc["splits"] = {"train": sorted(train), "validation": sorted(validation), "test": [], "excluded": rest}
        store.write_description(doc)


def train_round(dataset: Path, config: dict, output: Path, train: list[str], validation: list[str]) -> dict:
    """The initial training on ``train``: the config's epochs, validated once, after the last."""
    from lesionseg.training import train as run_training

    set_split(dataset, train, validation)
    started = time.perf_counter()
    result = run_training(dataset, config, output, device="cpu")
    return {
        "dice": result.history[-1]["dice_mean"],
        "epoch": result.last_epoch,
        "train_s": round(time.perf_counter() - started, 1),
    }


def fine_tune(dataset: Path, previous: Path, output: Path, until: int, train: list[str], validation: list[str]) -> dict:
    """``previous``'s run continued on ``train`` up to epoch ``until``: ``lesionseg train --resume --new-split``
    on a copy of its folder, so that the optimiser, schedule and random state go on as in one run."""
    from lesionseg.training import train as run_training

    shutil.copytree(previous, output, ignore=shutil.ignore_patterns("learning_curve.png"))
    # The model folder holds the best checkpoint's weights; without the earlier rounds' best it holds this round's
    # last (or a better one of this round), so the next ranking uses the model this round trained.
    (output / "checkpoint_best.pt").unlink(missing_ok=True)
    set_split(dataset, train, validation)
    started = time.perf_counter()
    result = run_training(dataset, None, output, epochs=until, resume=True, device="cpu", new_split=True)
    return {
        "dice": result.history[-1]["dice_mean"],
        "epoch": result.last_epoch,
        "train_s": round(time.perf_counter() - started, 1),
    }


def rank_pool(model: Path, pool: list[str], cases: Path, folder: Path, method: str) -> tuple[list[str], float]:
    """The pool cases most uncertain first, by ``lesionseg rank``'s engine function, and the seconds it took."""
    from lesionseg.inference.ranking import rank_cases, write_ranking

    images = folder / "images"
    images.mkdir(parents=True)
    for name in pool:
        (images / f"{name}.nii.gz").symlink_to((cases / name / "image.nii.gz").resolve())
    started = time.perf_counter()
    ranking = rank_cases(str(model), images, method, device="cpu")
    seconds = time.perf_counter() - started
    write_ranking(ranking, folder / "ranking")
    return [row["case"] for row in ranking["cases"]], round(seconds, 1)


def run_seed(seed: int, args: argparse.Namespace, work: Path, validation: list[str], task: dict, config: dict) -> dict:
    import numpy as np
    import torch

    from lesionseg.data import SynthOptions, generate_cohort

    sys.path.insert(0, str(ROOT / "scripts"))
    from train_demo_models import build_dataset

    torch.set_num_threads(args.threads)  # again: a --jobs worker is a fresh process
    folder = work / f"seed{seed}"
    cases = work / "cases"
    options = SynthOptions(size="small")
    generate_cohort(folder / "start", args.start, 10_000 + seed, options, overwrite=True)
    generate_cohort(folder / "pool", args.pool, 20_000 + seed, options, overwrite=True)
    start = link_cases(folder / "start", f"s{seed}-start", cases)
    pool = link_cases(folder / "pool", f"s{seed}-pool", cases)
    dataset = folder / "dataset"
    build_dataset(cases, start + pool + validation, dataset, task)
    config = {**config, "training": {**config["training"], "seed": seed}}

    initial = train_round(dataset, config, folder / "initial", start, validation)
    print(
        f"seed {seed} round 0: {len(start)} labelled, Dice {initial['dice']:.3f} ({initial['train_s']} s)", flush=True
    )
    rng = np.random.default_rng([seed, 19])
    arms = {
        arm: {"labelled": list(start), "model": folder / "initial", "epoch": initial["epoch"]}
        for arm in (*args.methods, RANDOM)
    }
    rounds = [{"round": 0, "labelled": len(start), **{arm: dict(initial) for arm in arms}}]
    for number in range(1, args.rounds + 1):
        row: dict = {"round": number}
        for arm, state in arms.items():
            left = [case for case in pool if case not in state["labelled"]]
            if arm == RANDOM:
                chosen = sorted(rng.choice(left, size=min(args.per_round, len(left)), replace=False).tolist())
                rank_s = None
            else:
                ranking = folder / f"ranking-{arm}-round{number}"
                order, rank_s = rank_pool(state["model"], left, cases, ranking, arm)
                chosen = order[: args.per_round]
            state["labelled"] += chosen
            output = folder / f"model-{arm}-round{number}"
            until = state["epoch"] + args.epochs
            figures = fine_tune(dataset, state["model"], output, until, state["labelled"], validation)
            state["model"], state["epoch"] = output, figures["epoch"]
            row[arm] = {**figures, "chosen": chosen, **({"rank_s": rank_s} if rank_s is not None else {})}
        row["labelled"] = len(arms[RANDOM]["labelled"])
        rounds.append(row)
        dice = ", ".join(f"{arm} {row[arm]['dice']:.3f}" for arm in arms)
        chose = "; ".join(f"{arm} chose {', '.join(row[arm]['chosen'])}" for arm in arms)
        print(f"seed {seed} round {number}: {row['labelled']} labelled, Dice {dice}; {chose}", flush=True)
    return {"seed": seed, "rounds": rounds}


def summarise(seeds: list[dict], methods: list[str]) -> dict[str, list[dict]]:
    """Per method and round: the mean Dice over seeds of its arm and of the random arm, and their difference."""
    import statistics

    out: dict[str, list[dict]] = {}
    for method in methods:
        rows = []
        for index, first in enumerate(seeds[0]["rounds"]):
            ranked = statistics.fmean(s["rounds"][index][method]["dice"] for s in seeds)
            random = statistics.fmean(s["rounds"][index][RANDOM]["dice"] for s in seeds)
            wins = sum(s["rounds"][index][method]["dice"] >= s["rounds"][index][RANDOM]["dice"] for s in seeds)
            rows.append(
                {
                    "round": first["round"],
                    "labelled": first["labelled"],
                    "rank": round(ranked, 4),
                    "random": round(random, 4),
                    "difference": round(ranked - random, 4),
                    "seeds_rank_at_least_random": wins,
                }
            )
        out[method] = rows
    return out


def machine(threads: int) -> dict:
    import subprocess

    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass  # lscpu is Linux only; the platform's name stands in
    return {"cpu": model, "threads": threads, "python": platform.python_version(), "torch": torch.__version__}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds (phantoms, training, random draw)")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds FIRST .. FIRST+N-1 (a replication on seeds not run before)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-round", type=int, default=4, help="cases added to the labelled set per round")
    parser.add_argument("--start", type=int, default=4, help="labelled phantoms to start from")
    parser.add_argument(
        "--pool", type=int, default=48, help="unlabelled phantoms to choose from (3 rounds of 4 take a quarter of 48)"
    )
    parser.add_argument("--validation", type=int, default=5, help="validation phantoms (the same for every seed)")
    parser.add_argument("--initial-epochs", type=int, default=40, help="epochs of the initial training")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per round (an epoch: one pass over its cases)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once, each in its own process")
    parser.add_argument(
        "--method", default="entropy", help="lesionseg rank --method; a comma-separated list gives one arm per method"
    )
    parser.add_argument("--work", type=Path, help="keep phantoms, datasets, models and rankings here")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    args = parser.parse_args()
    if args.seeds < 1 or args.first_seed < 0:
        parser.error(f"--seeds {args.seeds} --first-seed {args.first_seed}: give at least one seed, from 0 up")
    if args.rounds * args.per_round > args.pool:
        parser.error(f"--pool {args.pool} holds fewer than --rounds × --per-round cases")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    sys.path.insert(0, str(ROOT))

    import torch

    from lesionseg.data import SynthOptions, generate_cohort
    from lesionseg.inference.ranking import check_method

    args.methods = [check_method(name.strip()) for name in args.method.split(",")]
    if len(set(args.methods)) != len(args.methods):
        parser.error(f"--method {args.method}: a method is named twice")
    torch.set_num_threads(args.threads)
    task, config = demo_recipe()
    config["training"] = {**config["training"], "epochs": args.initial_epochs}
    # Each training validates its last epoch only (training always does): no checkpoint is picked on validation.
    config["validation"] = {**config["validation"], "interval": 1_000_000}
    config["model"] = {**config["model"], "id": "al-bench-spleen"}
    from lesionseg.training.export import trained_flips

    if "mutual_information" in args.methods and not trained_flips(config):
        parser.error(
            "--method mutual_information: the demo-spleen recipe trains without flips, so its models declare no "
            "test-time flips and every case would score 0 (lesionseg rank refuses it); choose other methods"
        )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lesionseg-al-") as scratch:
        work = args.work or Path(scratch)
        (work / "cases").mkdir(parents=True, exist_ok=False)
        generate_cohort(work / "validation", args.validation, VALIDATION_SEED, SynthOptions(size="small"))
        validation = link_cases(work / "validation", "validation", work / "cases")
        jobs = [
            (seed, args, work, validation, task, config)
            for seed in range(args.first_seed, args.first_seed + args.seeds)
        ]
        if args.jobs > 1:
            import multiprocessing

            with multiprocessing.get_context("spawn").Pool(min(args.jobs, args.seeds)) as workers:
                seeds = workers.starmap(run_seed, jobs)
        else:
            seeds = [run_seed(*job) for job in jobs]
    summary = summarise(seeds, args.methods)
    verdicts = {}
    for method, rows in summary.items():
        print(f"\nMean validation Dice over seeds: {method} against random")
        print("| round | labelled | rank | random | rank − random | seeds rank ≥ random |")
        print("|------:|---------:|-----:|-------:|--------------:|--------------------:|")
        for row in rows:
            print(
                f"| {row['round']} | {row['labelled']} | {row['rank']:.3f} | {row['random']:.3f} "
                f"| {row['difference']:+.3f} | {row['seeds_rank_at_least_random']}/{len(seeds)} |"
            )
        last = rows[-1]
        verdicts[method] = last["difference"] >= 0
        verdict = "at least as good as" if verdicts[method] else "worse than"
        print(
            f"verdict: {method}: at round {last['round']} ({last['labelled']} labelled) rank-chosen cases are "
            f"{verdict} random ones on average over {len(seeds)} seeds (rank − random {last['difference']:+.3f})"
        )
    wall = round(time.perf_counter() - started, 1)
    facts = machine(args.threads)
    facts["jobs"] = args.jobs
    print(json.dumps({"machine": facts, "wall_s": wall}))
    if args.json:
        report = {
            "arguments": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
            "machine": facts,
            "wall_s": wall,
            "seeds": seeds,
            "summary": summary,
            "rank_at_least_random": verdicts,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
