"""Train / validation / test splits by case, reproducible from a seed, stratified by lesion presence, and
grouped: cases of one patient or one study always fall on the same side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lesionseg.datasets.store import Dataset, recover, utc_now

# Provenance keys that tie cases together: two cases sharing either value are one group.
GROUP_KEYS = ("patient_key", "study_uid")


def _take(count_total: int, fraction: float) -> int:
    return int(round(count_total * fraction))


def case_provenance(dataset: Dataset, manifest: Mapping[str, Any], cases: Sequence[str]) -> dict[str, dict]:
    """The provenance of each case's current version."""
    return {case: dict(dataset.current_version(manifest, case).get("provenance", {})) for case in cases}


def case_groups(provenance: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """Cases that share a patient or a study (directly or through other cases), as sorted groups.

    A case with neither recorded is a group of its own.  Groups come in the order of their first case.
    """
    parent = {case: case for case in provenance}

    def root(case: str) -> str:
        while parent[case] != case:
            parent[case] = parent[parent[case]]
            case = parent[case]
        return case

    first: dict[tuple[str, str], str] = {}
    for case in sorted(provenance):
        for key in GROUP_KEYS:
            value = provenance[case].get(key)
            if value:
                other = first.setdefault((key, str(value)), case)
                parent[root(case)] = root(other)
    groups: dict[str, list[str]] = {}
    for case in sorted(provenance):
        groups.setdefault(root(case), []).append(case)
    return sorted(groups.values())


def assign_groups(
    groups: Sequence[Sequence[str]], shares: Sequence[tuple[str, float]], rng: np.random.Generator
) -> tuple[dict[str, list[str]], list[str]]:
    """Deal shuffled groups to the named sets until each holds its share of the cases; the rest is returned apart.

    A group is never split, so a set may get a little more than its share.  With one case per group this is
    a plain seeded shuffle of the cases.
    """
    order = [list(groups[i]) for i in rng.permutation(len(groups))]
    total = sum(len(group) for group in groups)
    targets = [(name, _take(total, share)) for name, share in shares]
    out: dict[str, list[str]] = {name: [] for name, _ in shares}
    rest: list[str] = []
    for group in order:
        for name, target in targets:
            if len(out[name]) < target:
                out[name] += group
                break
        else:
            rest += group
    return out, rest


def groups_across(groups: Sequence[Sequence[str]], sides: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """The groups whose cases sit on more than one side of a split."""
    side_of = {case: side for side, cases in sides.items() for case in cases}
    return [list(g) for g in groups if len({side_of[c] for c in g if c in side_of}) > 1]


def split_dataset(
    dataset_dir: str | Path,
    seed: int = 0,
    validation: float = 0.2,
    test: float = 0.1,
    exclude_lesion_free_from_train: bool = False,
) -> dict[str, Any]:
    """Assign every active case to train, validation or test and store it in dataset.json ``splits``.

    Each stratum (cases with and without lesions) is split on its own, so both sets keep the
    dataset's share of lesion-free cases.  Cases of one patient or study (``patient_key`` or
    ``study_uid`` in their provenance) stay together.  The same seed and cases give the same split.
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

        groups = case_groups(case_provenance(dataset, manifest, cases))
        rng = np.random.default_rng(seed)
        out: dict[str, list[str]] = {"train": [], "validation": [], "test": [], "excluded": []}
        for lesion in (True, False):
            # A group counts as lesion-bearing when any of its cases is.
            stratum = [g for g in groups if any(has_lesion(c) for c in g) == lesion]
            dealt, rest = assign_groups(stratum, [("test", test), ("validation", validation)], rng)
            out["test"] += dealt["test"]
            out["validation"] += dealt["validation"]
            out["excluded" if exclude_lesion_free_from_train and not lesion else "train"] += rest
        splits: dict[str, Any] = {key: sorted(value) for key, value in out.items()}
        splits.update(
            {
                "seed": int(seed),
                "validation_fraction": validation,
                "test_fraction": test,
                "exclude_lesion_free_from_train": bool(exclude_lesion_free_from_train),
                "lesion_cases": sorted(c for c in cases if has_lesion(c)),
                "grouped_by": list(GROUP_KEYS),
                "groups": [g for g in groups if len(g) > 1],
                "created": utc_now(),
            }
        )
        doc = dataset.description()
        doc["splits"] = splits
        dataset.write_description(doc)
    return splits
