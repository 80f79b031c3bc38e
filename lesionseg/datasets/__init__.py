"""Curated training datasets: Decathlon layout, append-only versions with hashes, splits, nnU-Net export."""

from lesionseg.datasets.cases import CaseRecord, add_case, add_case_from_files, remove_case
from lesionseg.datasets.nnunet import export_nnunet
from lesionseg.datasets.splits import split_dataset
from lesionseg.datasets.store import Dataset, init_dataset, recover
from lesionseg.datasets.verify import VerifyReport, verify_dataset

__all__ = [
    "CaseRecord",
    "Dataset",
    "VerifyReport",
    "add_case",
    "add_case_from_files",
    "export_nnunet",
    "init_dataset",
    "recover",
    "remove_case",
    "split_dataset",
    "verify_dataset",
]
