"""How sure the model is: flip test-time augmentation (``segment --uncertainty tta``).

The network runs once per member: unflipped, then once per flip of the spec's ``inference.tta`` (each window
mirrored along those network axes and its output mirrored back), so N members cost N sliding-window passes. Each
member's softmax ``p_m`` is kept only as two running sums on the network grid, the mean softmax ``p̄`` and the mean
member entropy, from which come, in nats:

* **entropy** ``H(p̄) = -Σ_c p̄_c ln p̄_c``: everything the model is unsure of, including a boundary it places
  consistently but softly;
* **mutual information** ``H(p̄) - mean_m H(p_m)``: the part on which the members disagree. It is 0 where every
  member gives the same softmax, and never exceeds the entropy.

The labels are the argmax (or the spec's threshold) of ``p̄``. The mean softmax, the entropy and the mutual
information go back to the input's grid through the same :class:`~lesionseg.inference.plan.NetworkPlan` as a
labelmap, interpolated linearly (the convex blend keeps 0 ≤ MI ≤ entropy).

Each predicted lesion (connected component, 26-connectivity, of a lesion label; of every label for a model that
names no lesion label) gets its volume, the mean ``p̄`` of its label inside it, and a **confidence**: one minus its
mean entropy divided by ``ln(classes)``, the most a voxel can have. Confidence is 1 when every member is certain of
the label everywhere in the lesion, and 0 when every voxel is a uniform guess.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lesionseg.image import Image
from lesionseg.inference.pipeline import LoadedModel, _run_windows, check_run, prepare_network_input
from lesionseg.inference.postprocess import postprocess
from lesionseg.inference.progress import Progress
from lesionseg.labels import LabelInfo
from lesionseg.models.spec import ModelSpec

UNCERTAINTY_METHODS = ("none", "tta")
MAP_NAMES = ("entropy", "mutual_information")
LESION_COLUMNS = (
    "id",
    "label",
    "name",
    "voxels",
    "volume_mm3",
    "confidence",
    "mean_probability",
    "mean_entropy",
    "mean_mutual_information",
    "centroid_ras_mm",
)
CONFIDENCE_DEFINITION = (
    "1 - mean over the lesion's voxels of the entropy of the mean TTA softmax divided by ln(number of classes)"
)


def check_uncertainty(method: str) -> str:
    """Refuse an uncertainty method other than ``none`` and ``tta`` before any work."""
    if method not in UNCERTAINTY_METHODS:
        raise ValueError(f"unknown uncertainty method {method!r}; use one of {', '.join(UNCERTAINTY_METHODS)}")
    return method


def tta_members(spec: ModelSpec) -> tuple[str, ...]:
    """The flips of the members in the order they run: the unflipped pass (``""``), then the spec's."""
    return ("", *spec.inference.tta)


def one_pass_note(spec: ModelSpec) -> str:
    """What a model without test-time flips gives as its uncertainty (empty for a model with flips)."""
    if spec.inference.tta:
        return ""
    return (
        f"model {spec.id!r} declares no test-time flips (its spec's inference.tta: it was not trained on mirrored "
        "images, and flipping would mislead it): the uncertainty is one pass's entropy, and the mutual information "
        "is 0"
    )


@dataclass
class UncertainSegmentation:
    """A labelmap with its uncertainty, every volume on the input's grid."""

    labelmap: Image  # uint8, post-processed as the spec says
    entropy: Image  # float32, nats
    mutual_information: Image  # float32, nats
    probability: Image  # float32: the mean softmax of each voxel's label (before post-processing)
    lesions: list[dict[str, Any]]  # one row per predicted lesion, LESION_COLUMNS
    flips: tuple[str, ...]  # each member's flip ("" for the unflipped one)
    pass_seconds: list[float] = field(default_factory=list)  # wall-clock seconds of each member's windows

    @property
    def passes(self) -> int:
        return len(self.flips)


def _entropy(probabilities):
    import torch

    return -torch.special.xlogy(probabilities, probabilities).sum(dim=0)


def predict_uncertain(
    image: Image,
    model: LoadedModel,
    progress: Progress,
    pass_seconds: list[float],
    *,
    threshold: float | None = None,
    crop_body: bool = False,
    further: Sequence[Image] = (),
) -> dict[str, Image]:
    """``labels`` (before post-processing), ``entropy``, ``mutual_information`` and ``probability`` on the input's
    grid; appends each member's seconds to ``pass_seconds``."""
    import time

    import torch

    if model.coarse is not None:
        raise ValueError(f"model {model.spec.id!r} is a cascade; --uncertainty tta supports one-step models only yet")
    plan, memory, volume_device, network_input = prepare_network_input(image, model, progress, crop_body, further)
    progress.stage("inference")
    members = tta_members(model.spec)
    mean_softmax = mean_entropy = None
    for index, flip in enumerate(members):
        started = time.perf_counter()
        stitched = _run_windows(network_input, model, memory, volume_device, progress, flip, (index, len(members)))
        softmax = torch.softmax(plan.from_network(stitched.logits), dim=0)
        del stitched
        entropy = _entropy(softmax)
        mean_softmax = softmax if mean_softmax is None else mean_softmax.add_(softmax)
        mean_entropy = entropy if mean_entropy is None else mean_entropy.add_(entropy)
        pass_seconds.append(time.perf_counter() - started)
    del network_input
    progress.stage("postprocess")
    mean_softmax /= len(members)
    mean_entropy /= len(members)
    total = _entropy(mean_softmax)
    disagreement = (total - mean_entropy).clamp_(min=0.0)
    del mean_entropy
    classes = mean_softmax.shape[0]
    scores = torch.cat([mean_softmax, total[None], disagreement[None]])
    del mean_softmax, total, disagreement
    outside = [1.0] + [0.0] * (classes - 1) + [0.0, 0.0]  # outside a body crop: certain background

    def derive(slab) -> dict[str, Any]:
        probabilities = slab[:classes]
        labels = probabilities[1] > threshold if threshold is not None else probabilities.argmax(dim=0)
        entropy = slab[classes].clamp(min=0.0)
        return {
            "labels": labels.to(torch.uint8),
            "entropy": entropy,
            "mutual_information": torch.minimum(slab[classes + 1].clamp(min=0.0), entropy),
            "probability": probabilities.gather(0, labels[None].long())[0],
        }

    return plan.to_input_maps(scores, outside, derive, lambda fraction: progress.update(0.8 * fraction))


def segment_uncertain(
    image: Image,
    model: LoadedModel,
    reporter: Progress,
    crop_body: bool = False,
    threshold: float | None = None,
    modality: str | None = None,
    allow_modality: str | None = None,
    further: Sequence[Image] = (),
) -> UncertainSegmentation:
    """``segment_image`` with flip test-time augmentation, once the model is loaded and ``threshold`` checked."""
    from lesionseg.inference.devices import subnormals_flushed

    check_run(image, model, reporter, modality, allow_modality, further)
    seconds: list[float] = []
    with subnormals_flushed(model.device):
        maps = predict_uncertain(
            image, model, reporter, seconds, threshold=threshold, crop_body=crop_body, further=further
        )
    labelmap = postprocess(maps["labels"], model.spec.postprocessing)
    reporter.update(1.0)
    lesions = lesion_confidence(labelmap, maps["entropy"], maps["mutual_information"], maps["probability"], model.spec)
    return UncertainSegmentation(
        labelmap,
        maps["entropy"],
        maps["mutual_information"],
        maps["probability"],
        lesions,
        tta_members(model.spec),
        [round(s, 4) for s in seconds],
    )


def lesion_confidence(
    labelmap: Image, entropy: Image, mutual_information: Image, probability: Image, spec: ModelSpec
) -> list[dict[str, Any]]:
    """One row per predicted lesion (:data:`LESION_COLUMNS`), least confident first."""
    from scipy import ndimage

    from lesionseg.metrics.lesions import neighbourhood

    labels: list[LabelInfo] = list(spec.labels)
    wanted = [label for label in labels if label.is_lesion] or labels
    most = math.log(spec.num_classes)
    structure = neighbourhood(26)
    rows = []
    for label in wanted:
        components, count = ndimage.label(labelmap.array == label.value, structure=structure)
        for number, box in enumerate(ndimage.find_objects(components), start=1):
            if box is None:
                continue
            inside = components[box] == number
            kji = np.argwhere(inside) + [s.start for s in box]
            mean_entropy = float(entropy.array[box][inside].mean())
            x, y, z = labelmap.world(kji[:, ::-1].mean(axis=0))
            rows.append(
                {
                    "label": label.value,
                    "name": label.name,
                    "voxels": int(inside.sum()),
                    "volume_mm3": round(float(inside.sum()) * labelmap.voxel_volume_mm3, 3),
                    "confidence": round(1.0 - mean_entropy / most, 6),
                    "mean_probability": round(float(probability.array[box][inside].mean()), 6),
                    "mean_entropy": round(mean_entropy, 6),
                    "mean_mutual_information": round(float(mutual_information.array[box][inside].mean()), 6),
                    "centroid_ras_mm": [round(float(-x), 3), round(float(-y), 3), round(float(z), 3)],
                }
            )
    rows.sort(key=lambda row: (row["confidence"], -row["voxels"], row["label"], row["centroid_ras_mm"]))
    return [{"id": n, **row} for n, row in enumerate(rows, start=1)]


def beside(labelmap_path: str | Path, what: str) -> Path:
    """Where an uncertainty output goes beside the labelmap: ``case.nii.gz`` → ``case_<what>.nii.gz``.

    ``what`` ending in ``.json`` or ``.csv`` names a table; otherwise a volume, NIfTI beside NIfTI and NRRD beside
    (segmentation) NRRD.
    """
    from lesionseg.inference.output import labelmap_format

    path = Path(labelmap_path)
    fmt = labelmap_format(path)
    stem = path.name[: -len(fmt)]
    if what.endswith((".json", ".csv")):
        return path.with_name(f"{stem}_{what}")
    return path.with_name(f"{stem}_{what}{'.nrrd' if fmt.endswith('.nrrd') else fmt}")


def uncertainty_outputs(labelmap_path: str | Path) -> dict[str, Path]:
    """Every file ``segment --uncertainty tta`` writes beside the labelmap, by name."""
    return {
        **{name: beside(labelmap_path, name) for name in MAP_NAMES},
        "lesions_json": beside(labelmap_path, "lesions.json"),
        "lesions_csv": beside(labelmap_path, "lesions.csv"),
    }


def write_uncertainty(result: UncertainSegmentation, labelmap_path: str | Path, about: dict[str, Any]) -> dict:
    """Write the uncertainty volumes and the lesion table beside the labelmap; returns the result event's
    ``uncertainty`` entry (``about``: the run's model and input, repeated in the lesion JSON)."""
    import csv
    import io
    import json

    from lesionseg.io import write_image
    from lesionseg.io.atomic import write_bytes_atomic

    paths = uncertainty_outputs(labelmap_path)
    for name in MAP_NAMES:
        write_image(getattr(result, name), paths[name])
    summary = {
        "method": "tta",
        "passes": result.passes,
        "flips": [flip or "none" for flip in result.flips],
        "pass_seconds": result.pass_seconds,
        "confidence": CONFIDENCE_DEFINITION,
        "units": {"entropy": "nat", "mutual_information": "nat", "volume_mm3": "mm³"},
        **({"note": about["note"]} if about.get("note") else {}),
    }
    document = {**about, **summary, "lesions": result.lesions}
    write_bytes_atomic(paths["lesions_json"], (json.dumps(document, indent=2, allow_nan=False) + "\n").encode())
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(LESION_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in result.lesions:
        writer.writerow({**row, "centroid_ras_mm": " ".join(str(v) for v in row["centroid_ras_mm"])})
    write_bytes_atomic(paths["lesions_csv"], buffer.getvalue().encode("utf-8"))
    return {**summary, "lesions": len(result.lesions), **{name: str(path) for name, path in paths.items()}}
