"""LesionSegTraining's "Which case next", in its Qt-free logic on a real slicer-core scene with a real background
``lesionseg rank`` job: the ranking arrives with progress, fills a table, loads the top case as a volume carrying
its rank, and the rank reaches the training case when it is saved."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
from support.tiny_models import edge_state, threshold_spec_dict, write_model_folder

slicer = pytest.importorskip("slicer")

from lesionseg.datasets import Dataset  # noqa: E402
from lesionseg.image import Image  # noqa: E402
from lesionseg.io import read_image, write_image  # noqa: E402
from lesionseg.jobs import JobState  # noqa: E402
from lesionseg.mrml import ensure_segmentation_converters, segmentation_node_from_labelmap  # noqa: E402
from LesionSegLib import ranking, training  # noqa: E402
from LesionSegLib.tables import table_rows  # noqa: E402


def box_case(boxes: int) -> Image:
    """Air with ``boxes`` bright boxes, whose faces across i the edge model is unsure of (as in test_rank)."""
    values = np.full((30, 30, 30), -1000, np.int16)
    for n in range(boxes):
        values[3 + 9 * n : 9 + 9 * n, 5:25, 5:25] = 1000
    return Image(values, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))


def wait(run, seconds: float = 300.0) -> list[float]:
    fractions = []
    deadline = time.monotonic() + seconds
    while not run.finished and time.monotonic() < deadline:
        run.poll()
        fractions.append(run.fraction)
        time.sleep(0.05)
    run.poll()
    return fractions + [run.fraction]


def test_rank_a_folder_load_the_top_case_and_save_it_with_its_rank(tmp_path):
    ensure_segmentation_converters()
    models = tmp_path / "models"
    write_model_folder(models / "edge", threshold_spec_dict("edge", spacing=None, roi=(32, 32, 32)), edge_state())
    pool = tmp_path / "pool"
    for name, boxes in (("clear", 0), ("unsure", 3), ("middle", 1)):
        write_image(box_case(boxes), pool / f"{name}.nii.gz")
    assert "edge" in ranking.ranking_models(models)

    run = ranking.RankingRun(pool, "edge", models, sys.executable, "cpu", "entropy").start()
    fractions = wait(run)
    assert run.state is JobState.SUCCEEDED, run.failure()
    assert fractions == sorted(fractions) and fractions[-1] == 1.0  # case by case, never backwards
    rows = run.rows()
    assert [row["case"] for row in rows] == ["unsure", "middle", "clear"]

    scene = slicer.vtkMRMLScene()
    table = ranking.ranking_table(scene, rows, "Which case next")
    shown = table_rows(table)
    assert [row["case"] for row in shown] == ["unsure", "middle", "clear"] and shown[0]["rank"] == 1

    volume = ranking.load_ranked_case(scene, run.ranking, rows[0])
    assert volume.GetName() == "unsure" and volume.GetAttribute("LesionSeg.Rank") == "1"
    assert volume.GetAttribute("LesionSeg.RankMethod") == "entropy"
    loaded = read_image(pool / "unsure.nii.gz")
    image = training.lesionseg.mrml.image_from_volume_node(volume)
    assert image.same_grid(loaded) and np.array_equal(image.array, loaded.array)

    # The annotator segments it and saves it as training data: the case remembers why it was picked.
    mask = (loaded.array > 0).astype(np.uint8)
    segmentation = segmentation_node_from_labelmap(scene, loaded.with_array(mask), "boxes", {1: "dense"}, volume)
    record = training.save_case(tmp_path / "dataset", volume, segmentation, "Dr. Rank")
    dataset = Dataset(tmp_path / "dataset")
    version = dataset.current_version(dataset.manifest(), record.case_id)
    ranked = version["provenance"]["ranked"]
    assert ranked["rank"] == 1 and ranked["method"] == "entropy" and ranked["model"] == "edge"
    assert ranked["case"] == "unsure" and ranked["score"] == pytest.approx(rows[0]["entropy"])
    unranked = ranking.rank_provenance(scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode"))
    assert unranked == {}

    # least_foreground ranks the smallest predicted foreground first, and its score is that volume
    least = ranking.RankingRun(pool, "edge", models, sys.executable, "cpu", "least_foreground").start()
    wait(least)
    assert least.state is JobState.SUCCEEDED, least.failure()
    rows = least.rows()
    assert [row["case"] for row in rows] == ["clear", "middle", "unsure"] and rows[0]["foreground_ml"] == 0
    assert table_rows(ranking.ranking_table(scene, rows, "Least found"))[0]["foreground_ml"] == 0
    top = ranking.load_ranked_case(scene, least.ranking, rows[0])
    assert top.GetAttribute("LesionSeg.RankMethod") == "least_foreground"
    assert float(top.GetAttribute("LesionSeg.RankScore")) == 0


def test_ranking_refusals_name_the_problem(tmp_path):
    models = tmp_path / "models"
    write_model_folder(models / "edge", threshold_spec_dict("edge", spacing=None, roi=(32, 32, 32)), edge_state())
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images"):
        ranking.RankingRun(empty, "edge", models, sys.executable, "cpu")
    write_image(box_case(1), empty / "one.nii.gz")
    with pytest.raises(ValueError, match="unknown ranking method 'variance'"):
        ranking.RankingRun(empty, "edge", models, sys.executable, "cpu", "variance")
    with pytest.raises(ValueError, match="choose the model"):
        ranking.RankingRun(empty, "", models, sys.executable, "cpu")
    flat = threshold_spec_dict("flat", spacing=None, roi=(32, 32, 32), tta=[])  # a model trained without flips
    write_model_folder(models / "flat", flat, edge_state())
    with pytest.raises(ValueError, match="Rank by mutual_information: model 'flat' declares no test-time flips"):
        ranking.RankingRun(empty, "flat", models, sys.executable, "cpu", "mutual_information")
    failed = ranking.RankingRun(empty, "no-such-model", models, sys.executable, "cpu").start()
    wait(failed)
    assert failed.state is JobState.FAILED and "unknown model 'no-such-model'" in failed.failure()
    failed.cleanup()
