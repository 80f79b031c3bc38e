"""``lesionseg rank``: which unlabelled case to annotate next, by the model's uncertainty."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from support.cli import lesionseg
from support.tiny_models import edge_state, threshold_spec_dict, threshold_state, write_model_folder

from lesionseg.errors import UserError
from lesionseg.image import Image
from lesionseg.inference.pipeline import load_model
from lesionseg.inference.ranking import rank_cases, write_ranking
from lesionseg.io import write_image

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def edge_folder(tmp_path_factory):
    """A model unsure exactly on intensity edges across network axis i (its TTA members disagree there)."""
    folder = tmp_path_factory.mktemp("models") / "edge"
    return write_model_folder(folder, threshold_spec_dict("edge", spacing=None, roi=(32, 32, 32)), edge_state())


def case(boxes: int) -> Image:
    """Air with ``boxes`` bright boxes: each box's faces across i are edges the model is unsure of."""
    values = np.full((30, 30, 30), -1000, np.int16)
    for n in range(boxes):
        values[3 + 9 * n : 9 + 9 * n, 5:25, 5:25] = 1000
    return Image(values, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pool")
    for name, boxes in (("clear", 0), ("unsure", 3), ("middle", 1)):
        write_image(case(boxes), folder / f"{name}.nii.gz")
    return folder


def test_a_case_the_model_is_unsure_of_ranks_above_a_clear_one(edge_folder, pool, tmp_path):
    model = load_model(edge_folder, "cpu", backend="torch")
    ranking = rank_cases(model, pool, "entropy")
    assert [row["case"] for row in ranking["cases"]] == ["unsure", "middle", "clear"]
    assert [row["rank"] for row in ranking["cases"]] == [1, 2, 3]
    clear = ranking["cases"][-1]
    assert clear["entropy"] == 0 and clear["mutual_information"] == 0 and clear["lesion_count"] == 0
    assert ranking["passes"] == 4 and ranking["method"] == "entropy"
    by_count = rank_cases(model, pool, "lesion_count")
    assert [row["lesion_count"] for row in by_count["cases"]] == [3, 1, 0]
    by_information = rank_cases(model, pool, "mutual_information")
    assert by_information["cases"][0]["case"] == "unsure"
    csv_path, json_path = write_ranking(ranking, tmp_path / "ranking.csv")
    assert json.loads(json_path.read_text())["cases"] == ranking["cases"]
    rows = list(csv.DictReader(csv_path.open()))
    assert [row["case"] for row in rows] == ["unsure", "middle", "clear"] and rows[0]["images"].endswith(
        "unsure.nii.gz"
    )


def test_region_entropy_ranks_a_small_unsure_organ_above_a_large_body_with_a_sure_one(tmp_path):
    # The threshold model (class 1 above 100 HU, per voxel): 60 HU tissue gets a foreground probability of 0.018,
    # a little entropy everywhere but below region_entropy's 0.05; 100 HU gets 0.5, the most unsure there is.
    folder = write_model_folder(tmp_path / "threshold", threshold_spec_dict(spacing=None), threshold_state())
    pool = tmp_path / "pool"
    pool.mkdir()
    body = np.full((40, 40, 40), 60, np.int16)
    body[10:30, 10:30, 10:30] = 1000  # an organ the model is sure of
    small = np.full((20, 20, 20), -1000, np.int16)
    small[8:12, 8:12, 8:12] = 100  # an organ the model is unsure of
    air = np.full((20, 20, 20), -1000, np.int16)
    for name, values in (("large_sure", body), ("small_unsure", small), ("air", air)):
        write_image(Image(values, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3)), pool / f"{name}.nii.gz")
    model = load_model(folder, "cpu", backend="torch")
    by_region = {row["case"]: row for row in rank_cases(model, pool, "region_entropy")["cases"]}
    assert [row["case"] for row in rank_cases(model, pool, "entropy")["cases"]][0] == "large_sure"
    assert list(by_region) == ["small_unsure", "large_sure", "air"]
    assert by_region["small_unsure"]["region_entropy"] == pytest.approx(np.log(2), abs=1e-3)
    assert by_region["large_sure"]["region_entropy"] < 0.01 and by_region["air"]["region_entropy"] == 0


def test_least_foreground_ranks_a_confident_miss_first_where_the_uncertainty_scores_rank_it_last(tmp_path):
    # The threshold model (class 1 above 100 HU): an organ drawn at 60 HU is missed with confidence (foreground
    # probability 0.018), one at 104 HU barely found (just over 0.5, near the most entropy), one at 1000 HU found
    # with confidence.
    folder = write_model_folder(tmp_path / "threshold", threshold_spec_dict(spacing=None), threshold_state())
    pool = tmp_path / "pool"
    pool.mkdir()
    for name, hu, size in (("missed", 60, 12), ("half_found", 104, 8), ("found", 1000, 10)):
        values = np.full((24, 24, 24), -1000, np.int16)
        values[4 : 4 + size, 4 : 4 + size, 4 : 4 + size] = hu
        write_image(Image(values, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3)), pool / f"{name}.nii.gz")
    model = load_model(folder, "cpu", backend="torch")
    ranking = rank_cases(model, pool, "least_foreground")
    rows = {row["case"]: row for row in ranking["cases"]}
    assert list(rows) == ["missed", "half_found", "found"]
    assert rows["missed"]["foreground_ml"] == 0 and rows["found"]["foreground_ml"] == pytest.approx(8.0)
    assert 0 < rows["half_found"]["foreground_ml"] < rows["found"]["foreground_ml"]
    # every uncertainty score puts the confident miss below the half-found case
    for method in ("entropy", "region_entropy"):
        order = [row["case"] for row in rank_cases(model, pool, method)["cases"]]
        assert order.index("missed") > order.index("half_found"), (method, order)
    csv_path, _ = write_ranking(ranking, tmp_path / "ranking.csv")
    assert [row["foreground_ml"] for row in csv.DictReader(csv_path.open())][0] == "0.0"


def test_rank_cli_writes_csv_and_json_most_uncertain_first(edge_folder, pool, tmp_path):
    out = tmp_path / "next"
    done = lesionseg("rank", "--model", str(edge_folder), "--images", str(pool), "--method", "mutual_information",
                     "--output", str(out), "--device", "cpu", "--backend", "torch")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(tmp_path / "next.csv"), str(tmp_path / "next.json")]
    ranking = json.loads((tmp_path / "next.json").read_text())
    assert [row["case"] for row in ranking["cases"]] == ["unsure", "middle", "clear"]
    again = lesionseg("rank", "--model", str(edge_folder), "--images", str(pool), "--output", str(out))
    assert again.returncode == 2 and "next.csv already exists" in again.stderr


def test_rank_reads_a_datasets_cases(edge_folder, tmp_path):
    from lesionseg.datasets import add_case_from_files, init_dataset

    dataset = tmp_path / "dataset"
    init_dataset(dataset, {1: "dense"}, name="pool")
    for name, boxes in (("case_a", 0), ("case_b", 2)):
        image = write_image(case(boxes), tmp_path / f"{name}.nii.gz")
        label = write_image(case(0).with_array(np.zeros((30, 30, 30), np.uint8)), tmp_path / f"{name}_label.nii.gz")
        add_case_from_files(dataset, image, label, case_id=name)
    ranking = rank_cases(load_model(edge_folder, "cpu", backend="torch"), dataset, "entropy")
    assert [row["case"] for row in ranking["cases"]] == ["case_b", "case_a"]


def test_rank_errors_name_the_problem(edge_folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    model = str(edge_folder)
    done = lesionseg("rank", "--model", model, "--images", str(empty), "--output", str(tmp_path / "r"))
    assert done.returncode == 2 and "no images" in done.stderr and "nothing to rank" in done.stderr
    done = lesionseg("rank", "--model", model, "--images", str(tmp_path / "nowhere"), "--output", str(tmp_path / "r"))
    assert done.returncode == 2 and "no such folder" in done.stderr
    done = lesionseg("rank", "--model", model, "--images", str(empty), "--method", "variance", "--output", "r")
    assert done.returncode == 2 and "unknown ranking method 'variance'" in done.stderr
    one_slice = Image(np.zeros((1, 30, 30), np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    write_image(one_slice, empty / "flat.nii.gz")
    with pytest.raises(UserError, match="case flat: "):
        rank_cases(load_model(edge_folder, "cpu", backend="torch"), empty)
    (empty / "flat.nii.gz").unlink()
    (empty / "broken.nii.gz").write_bytes(b"this is not a NIfTI file")
    with pytest.raises(UserError, match="case broken: cannot read its image"):
        rank_cases(load_model(edge_folder, "cpu", backend="torch"), empty)
    done = lesionseg("rank", "--model", model, "--images", str(empty), "--output", str(tmp_path / "r"),
                     "--backend", "torch", "--device", "cpu")  # fmt: skip
    assert done.returncode == 2 and "broken" in done.stderr, done.stderr
    assert not (tmp_path / "r.csv").exists()


def test_rank_streams_job_events_for_the_modules(edge_folder, pool, tmp_path):
    from lesionseg.jobs import EventKind, protocol

    done = lesionseg("rank", "--model", str(edge_folder), "--images", str(pool), "--output", str(tmp_path / "next"),
                     "--device", "cpu", "--backend", "torch", "--progress", "jsonl")  # fmt: skip
    assert done.returncode == 0, done.stderr
    events = [protocol.parse_line(line) for line in done.stdout.splitlines()]
    assert all(e.kind is not EventKind.OUTPUT for e in events), done.stdout  # nothing but events on stdout
    progress = [e.data for e in events if e.kind is EventKind.PROGRESS]
    assert [(p["cases_done"], p["cases_total"]) for p in progress] == [(1, 3), (2, 3), (3, 3)]
    assert progress[-1]["percent"] == 100.0 and {p["stage"] for p in progress} == {"rank"}
    result = next(e.data for e in events if e.kind is EventKind.RESULT)
    assert result["output"] == str(tmp_path / "next.json")
    assert [row["case"] for row in result["ranking"]["cases"]] == ["unsure", "middle", "clear"]
    refused = lesionseg("rank", "--model", str(edge_folder), "--images", str(tmp_path / "nowhere"), "--output",
                        str(tmp_path / "r"), "--progress", "jsonl")  # fmt: skip
    errors = [e.data for e in map(protocol.parse_line, refused.stdout.splitlines()) if e.kind is EventKind.ERROR]
    assert refused.returncode == 2 and errors and "no such folder" in errors[0]["text"]


def test_mutual_information_is_refused_for_a_model_without_test_time_flips(tmp_path, pool):
    folder = write_model_folder(tmp_path / "flat", threshold_spec_dict("flat", spacing=None, tta=[]), threshold_state())
    model = load_model(folder, "cpu", backend="torch")
    with pytest.raises(UserError, match="declares no test-time flips .* rank by entropy, region_entropy or least_fo"):
        rank_cases(model, pool, "mutual_information")
    ranking = rank_cases(model, pool, "entropy")  # one pass: its entropy still ranks
    assert ranking["passes"] == 1 and all(row["mutual_information"] == 0 for row in ranking["cases"])
