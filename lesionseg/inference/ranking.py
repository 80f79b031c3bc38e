"""Which case to annotate next: unlabelled cases ranked by how unsure a model is of them (``lesionseg rank``).

Each case runs the ``segment --uncertainty tta`` path (:mod:`lesionseg.inference.uncertainty`) and gets three
scores; the method picks the one cases are sorted by, largest (most worth an annotator's time) first:

* ``entropy``: the entropy volume summed over the case, in nat·mL (voxel entropy × voxel volume), so that a case
  is not ranked up or down by how much air surrounds it, but by how much tissue the model is unsure of;
* ``mutual_information``: the same sum of the mutual information (where the TTA members disagree);
* ``region_entropy``: the mean voxel entropy (nat) over the region where the model considers a structure, the
  voxels to which it gives the foreground classes together a probability of at least 0.05 (0 where there are none):
  a mean over that region, not a sum over the case, so that a large body scores no higher than a small one and a
  large organ the model is sure of scores below a small one it is unsure of;
* ``lesion_count``: predicted lesions (26-connected components of the lesion labels);
* ``least_foreground``: the predicted foreground volume (``foreground_ml``, every label, after post-processing),
  **smallest first**. For a structure every case has (an organ), a case where the model finds little or none of it
  is a miss the model is sure of, which the uncertainty scores rank last: they are high where it half finds the
  structure. Not for lesions, which a case may rightly lack.

The mean voxel entropy and the least lesion confidence are reported beside them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lesionseg.errors import UserError
from lesionseg.inference.uncertainty import UncertainSegmentation

RANK_METHODS = ("entropy", "mutual_information", "region_entropy", "lesion_count", "least_foreground")
# Methods whose score ranks the smallest first (the rest: the largest first); each ranks by this column.
ASCENDING = {"least_foreground": "foreground_ml"}
RANK_COLUMNS = (
    "rank",
    "case",
    "entropy",
    "mutual_information",
    "region_entropy",
    "lesion_count",
    "foreground_ml",
    "mean_entropy",
    "min_lesion_confidence",
    "images",
)
# region_entropy's region: voxels given at least this foreground probability (all foreground classes together).
REGION_FOREGROUND = 0.05
# Names in an images folder that are not images to rank: labelmaps and this command's own outputs.
_NOT_IMAGES = (".seg.nrrd",)


def score_column(method: str) -> str:
    """The column of a case's scores that ``method`` ranks by."""
    return ASCENDING.get(method, method)


def check_method(method: str) -> str:
    if method not in RANK_METHODS:
        raise ValueError(f"unknown ranking method {method!r}; use one of {', '.join(RANK_METHODS)}")
    return method


def check_method_for(spec: Any, method: str) -> None:
    """Refuse a method that cannot rank with this model's spec: mutual_information without test-time flips."""
    if method == "mutual_information" and not spec.inference.tta:
        raise UserError(
            f"--method mutual_information: model {spec.id!r} declares no test-time flips (its spec's "
            "inference.tta; it was not trained on mirrored images), so there is nothing to disagree and every case "
            "would score 0; rank by entropy, region_entropy or least_foreground"
        )


def _case_name(path: Path) -> str:
    from lesionseg.io import IMAGE_SUFFIXES

    name = path.name
    lower = name.lower()
    return next((name[: -len(s)] for s in IMAGE_SUFFIXES if lower.endswith(s)), name)


def rank_inputs(source: str | Path) -> list[tuple[str, list[Path]]]:
    """The cases to rank, each with its images (one per channel): a dataset's active cases, or a folder's images
    (files with an image suffix, and subfolders as DICOM series)."""
    from lesionseg.datasets import Dataset
    from lesionseg.io import IMAGE_SUFFIXES

    root = Path(source)
    if not root.is_dir():
        raise UserError(f"--images {root}: no such folder; give a folder of images or a dataset folder")
    dataset = Dataset(root)
    if dataset.exists():
        cases = [(case, dataset.image_paths(case)) for case in dataset.active_cases()]
        what = "active cases in dataset"
    else:
        found = sorted(
            p
            for p in root.iterdir()
            if not p.name.startswith(".")
            and (p.is_dir() or (p.name.lower().endswith(IMAGE_SUFFIXES) and not p.name.lower().endswith(_NOT_IMAGES)))
        )
        cases = [(_case_name(p), [p]) for p in found]
        what = f"images ({', '.join(s for s in IMAGE_SUFFIXES if s not in _NOT_IMAGES)} or DICOM folders) in"
    if not cases:
        raise UserError(f"--images {root}: no {what} {root}; nothing to rank")
    return cases


def considered_region(result: UncertainSegmentation) -> np.ndarray:
    """The voxels to which the model gives the foreground classes together a probability of at least
    :data:`REGION_FOREGROUND`: labelled ones, and background ones whose background probability is at most 0.95."""
    # ``probability`` is the mean softmax of each voxel's own label, so on a background voxel it is the background's.
    # Labelled voxels count whatever their probability; voxels that post-processing took out hold their removed
    # label's probability, which counts them unless the model was sure of that label.
    labelled = result.labelmap.array != 0
    return labelled | (result.probability.array <= 1.0 - REGION_FOREGROUND)


def case_scores(result: UncertainSegmentation) -> dict[str, Any]:
    """A case's scores from its segmentation with uncertainty (see the module's description)."""
    voxel_ml = result.entropy.voxel_volume_mm3 / 1000.0
    confidences = [row["confidence"] for row in result.lesions]
    region = considered_region(result)
    region_entropy = float(result.entropy.array[region].mean(dtype=np.float64)) if region.any() else 0.0
    return {
        "entropy": round(float(result.entropy.array.sum(dtype=np.float64)) * voxel_ml, 6),
        "mutual_information": round(float(result.mutual_information.array.sum(dtype=np.float64)) * voxel_ml, 6),
        "region_entropy": round(region_entropy, 8),
        "lesion_count": len(result.lesions),
        "foreground_ml": round(float(np.count_nonzero(result.labelmap.array)) * voxel_ml, 6),
        "mean_entropy": round(float(result.entropy.array.mean(dtype=np.float64)), 8),
        "min_lesion_confidence": min(confidences) if confidences else None,
    }


def rank_cases(
    model: Any,
    source: str | Path,
    method: str = "entropy",
    device: str = "auto",
    models_dir: str | Path | None = None,
    say: Callable[[str], None] | None = None,
    cases_done: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Rank the cases of ``source`` (folder or dataset) by ``method``; ``model``: id, folder, spec or LoadedModel.

    ``say`` gets a line per case scored, and ``cases_done`` the cases scored so far and in all.

    Returns ``{"model", "method", "images", "passes", "cases": [...]}`` with the cases most uncertain first.
    """
    from lesionseg.inference.pipeline import LoadedModel, load_model
    from lesionseg.inference.progress import Progress
    from lesionseg.inference.uncertainty import segment_uncertain, tta_members

    check_method(method)
    cases = rank_inputs(source)
    loaded = model if isinstance(model, LoadedModel) else load_model(model, device, models_dir)
    check_method_for(loaded.spec, method)
    threshold = loaded.spec.inference.threshold
    column, order = score_column(method), (1 if method in ASCENDING else -1)  # smallest or largest first
    rows = []
    for number, (case, paths) in enumerate(cases, start=1):
        if len(paths) != loaded.spec.input_channels:
            raise UserError(
                f"case {case}: {len(paths)} image(s), but model {loaded.spec.id!r} takes {loaded.spec.input_channels}"
                " channel(s); rank a dataset with the model's channels"
            )
        image, modality, further = _read_case(case, paths, loaded.spec.channel_names)
        try:
            result = segment_uncertain(
                image, loaded, Progress(), threshold=threshold, modality=modality, further=further
            )
        except ValueError as error:  # input the model refuses: say which case, so it can be taken out
            raise UserError(f"case {case}: {error}") from error
        rows.append({"case": case, **case_scores(result), "images": [str(p) for p in paths]})
        if say:
            say(f"{number}/{len(cases)} {case}: {column} {rows[-1][column]}")
        if cases_done:
            cases_done(number, len(cases))
    rows.sort(key=lambda row: (order * row[column], -row["entropy"], row["case"]))
    ranked = [{"rank": n, **row} for n, row in enumerate(rows, start=1)]
    passes = len(tta_members(loaded.spec))
    return {"model": loaded.spec.id, "method": method, "images": str(source), "passes": passes, "cases": ranked}


def _read_case(case: str, paths: list[Path], names: list[str]) -> tuple[Any, str | None, list]:
    """A case's first image, its DICOM modality, and its further channels on the first one's grid."""
    from lesionseg.errors import describe
    from lesionseg.inference.channels import align_channels, read_channel
    from lesionseg.inference.validity import read_model_input

    try:
        if len(paths) == 1:
            source = read_model_input(paths[0])
            return source.image, source.modality, []
        channels = [read_channel(name, str(path)) for name, path in zip(names, paths, strict=True)]
    except Exception as error:  # each reader has its own errors; the user needs the case and the file
        raise UserError(f"case {case}: cannot read its image ({describe(error)[0]})") from error
    return channels[0].image, channels[0].modality, align_channels(channels)[1:]


def ranking_paths(output: str | Path) -> tuple[Path, Path]:
    """The CSV and JSON a ranking is written to: ``OUT.csv`` and ``OUT.json`` (``OUT`` may end in either)."""
    path = Path(output)
    stem = path.name[: -len(path.suffix)] if path.suffix.lower() in (".csv", ".json") else path.name
    return path.with_name(f"{stem}.csv"), path.with_name(f"{stem}.json")


def write_ranking(ranking: dict[str, Any], output: str | Path) -> tuple[Path, Path]:
    """Write the ranking as CSV (one row a case, in rank order) and JSON, atomically."""
    import csv
    import io
    import json

    from lesionseg.io.atomic import write_bytes_atomic

    csv_path, json_path = ranking_paths(output)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(RANK_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in ranking["cases"]:
        cells = {**row, "images": ";".join(row["images"])}
        writer.writerow({key: "" if cells[key] is None else cells[key] for key in RANK_COLUMNS})
    write_bytes_atomic(csv_path, buffer.getvalue().encode("utf-8"))
    write_bytes_atomic(json_path, (json.dumps(ranking, indent=2, allow_nan=False) + "\n").encode("utf-8"))
    return csv_path, json_path
