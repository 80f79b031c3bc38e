"""Train / validation / test splits by case, reproducible from a seed and stratified by lesion presence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lesionseg.datasets.store import Dataset, recover, utc_now


def _take(count_total: int, fraction: float) -> int:
    return int(round(count_total * fraction))


def split_dataset(
    dataset_dir: str | Path,
    seed: int = 0,
    validation: float = 0.2,
    test: float = 0.1,
    exclude_lesion_free_from_train: bool = False,
) -> dict[str, Any]:
    """Assign every active case to train, validation or test and store it in dataset.json ``splits``.

    Each stratum (cases with and without lesions) is split on its own, so both sets keep the
    dataset's share of lesion-free cases.  The same seed and cases always give the same split.
    """
    if not (0 <= validation < 1 and 0 <= test < 1 and validation + test < 1):
        raise ValueError(f"--val {validation} and --test {test} must be fractions in [0, 1) that sum to less than 1")
    dataset = Dataset(dataset_dir)
    with dataset.lock():
        recover(dataset)
        manifest = dataset.manifest()
        cases = dataset.active_cases(manifest)
        if not cases:
            raise ValueError(f"{dataset.root} has no cases to split; add some with `lesionseg dataset add`")
        lesion_labels = set(dataset.lesion_labels())
        if exclude_lesion_free_from_train and not lesion_labels:
            raise ValueError(
                '--exclude-lesion-free-from-train needs lesion labels: set "lesion_labels" in dataset.json '
                "(e.g. `lesionseg dataset init ... --lesion-labels lesion`)"
            )

        def has_lesion(case_id: str) -> bool:
            present = set(dataset.current_version(manifest, case_id)["labels_present"])
            return bool(present & lesion_labels)

        rng = np.random.default_rng(seed)
        out: dict[str, list[str]] = {"train": [], "validation": [], "test": [], "excluded": []}
        for lesion in (True, False):
            stratum = [c for c in cases if has_lesion(c) == lesion]
            order = [stratum[i] for i in rng.permutation(len(stratum))]
            n_test, n_val = _take(len(order), test), _take(len(order), validation)
            out["test"] += order[:n_test]
            out["validation"] += order[n_test : n_test + n_val]
            rest = order[n_test + n_val :]
            out["excluded" if exclude_lesion_free_from_train and not lesion else "train"] += rest
        splits = {key: sorted(value) for key, value in out.items()}
        splits.update(
            {
                "seed": int(seed),
                "validation_fraction": validation,
                "test_fraction": test,
                "exclude_lesion_free_from_train": bool(exclude_lesion_free_from_train),
                "lesion_cases": sorted(c for c in cases if has_lesion(c)),
                "created": utc_now(),
            }
        )
        doc = dataset.description()
        doc["splits"] = splits
        dataset.write_description(doc)
    return splits
