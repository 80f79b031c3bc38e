"""``segment --uncertainty tta``: flip test-time augmentation, its uncertainty volumes and the per-lesion table."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from support.cli import lesionseg
from support.geometries import rotation
from support.tiny_models import (
    THRESHOLD_HU,
    edge_state,
    phantom_ct,
    sphere_label,
    threshold_spec_dict,
    threshold_state,
    write_model_folder,
)

from lesionseg.image import Image
from lesionseg.inference import segment_file, segment_image
from lesionseg.inference.pipeline import load_model
from lesionseg.inference.progress import Progress
from lesionseg.inference.uncertainty import segment_uncertain
from lesionseg.io import read_image, write_image
from lesionseg.models import spec_from_dict
from lesionseg.orientation import reorient

torch.set_num_threads(2)
GAIN = 200.0  # threshold_state's default: the class-1 logit per unit of scaled intensity


@pytest.fixture(scope="module")
def edge_model(tmp_path_factory):
    """Finds rises of intensity along network axis i, so a flip along i turns its answer to the other side."""
    folder = tmp_path_factory.mktemp("models") / "edge"
    write_model_folder(folder, threshold_spec_dict("edge", spacing=None, roi=(48, 48, 48)), edge_state())
    return load_model(folder, "cpu", backend="torch")


@pytest.fixture(scope="module")
def threshold_model(tmp_path_factory):
    """Voxel-wise, so mirrored windows give the same answer: every member agrees."""
    folder = tmp_path_factory.mktemp("models") / "threshold"
    write_model_folder(folder, threshold_spec_dict(spacing=None, roi=(64, 64, 64)), threshold_state())
    return load_model(folder, "cpu", backend="torch")


@pytest.fixture(scope="module")
def resampling_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "threshold_resampled"
    write_model_folder(folder, threshold_spec_dict(spacing=(1.5, 1.5, 2.0)), threshold_state())
    return load_model(folder, "cpu", backend="torch")


def two_boxes() -> Image:
    """Air with two bright boxes: their faces across i are edges the TTA members see differently."""
    values = np.full((40, 40, 40), -1000, np.int16)
    values[8:20, 8:20, 8:20] = 1000
    values[26:34, 24:34, 22:32] = 1000
    return Image(values, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))


def binary_entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_members_that_agree_with_certainty_give_zero_and_flips_that_disagree_give_their_entropy(edge_model):
    image = two_boxes()
    events = []
    result = segment_uncertain(image, edge_model, Progress(events.append))
    entropy, information = result.entropy.array, result.mutual_information.array
    # Only the faces across i are edges along i: three members (unflipped, j, k) see a rise on one face and the
    # i-flipped one sees it on the other, each with certainty.
    faces = np.zeros(image.array.shape, bool)
    faces[8:20, 8:20, [7, 8, 19, 20]] = True
    faces[26:34, 24:34, [21, 22, 31, 32]] = True
    assert np.all(entropy[~faces] == 0.0) and np.all(information[~faces] == 0.0)
    np.testing.assert_allclose(entropy[faces], binary_entropy(0.25), rtol=1e-5)
    # The members are each certain, so all of the entropy is their disagreement.
    np.testing.assert_allclose(information[faces], entropy[faces], rtol=1e-5)
    assert result.passes == 4 and result.flips == ("", "i", "j", "k")
    passes = [e["tta_pass"] for e in events if e["event"] == "progress" and "tta_pass" in e]
    assert passes == sorted(passes) and set(passes) == {1, 2, 3, 4}
    assert all(e["tta_passes"] == 4 for e in events if "tta_pass" in e)


def test_the_lesion_table_lists_each_predicted_lesion_with_confidence_volume_and_probability(edge_model):
    result = segment_uncertain(two_boxes(), edge_model, Progress())
    # Three of four members put each box's rising face (two voxels thick) in the foreground.
    rows = result.lesions
    assert sorted(row["voxels"] for row in rows) == [8 * 10 * 2, 12 * 12 * 2]
    assert [row["id"] for row in rows] == [1, 2]
    for row in rows:
        assert row["volume_mm3"] == pytest.approx(row["voxels"] * 1.0)
        assert row["mean_probability"] == pytest.approx(0.75, abs=1e-5)
        assert row["confidence"] == pytest.approx(1.0 - binary_entropy(0.75) / math.log(2), abs=1e-5)
    labelled = result.labelmap.array
    assert int(labelled.sum()) == sum(row["voxels"] for row in rows)


def test_mutual_information_never_exceeds_entropy_and_vanishes_when_members_agree(resampling_model):
    ct = phantom_ct(spacing=(1.3, 1.1, 2.4), direction=np.diag([-1.0, 1.0, 1.0]))
    result = segment_uncertain(ct, resampling_model, Progress())
    entropy, information = result.entropy.array, result.mutual_information.array
    assert entropy.dtype == np.float32 and entropy.max() > 0.1  # the blob's soft rim
    assert np.all(information <= entropy) and np.all(information >= 0)
    assert information.max() < 1e-5  # a voxel-wise model is the same under every flip
    assert np.all(entropy <= math.log(2) + 1e-6)


def test_uncertainty_lies_on_an_oblique_input_grid_voxel_for_voxel(threshold_model):
    # Native spacing: the network sees each input voxel itself, so each voxel's entropy is known from its value.
    grid = dict(shape_kji=(30, 36, 40), spacing=(0.9, 1.1, 1.7))
    direction = rotation("x", 25) @ rotation("z", 35)
    oblique = phantom_ct(**grid, origin=(12.0, -30.0, 5.0), direction=direction)
    result = segment_uncertain(oblique, threshold_model, Progress())
    for volume in (result.entropy, result.mutual_information, result.labelmap):
        assert volume.same_grid(oblique)
    np.testing.assert_array_equal(result.labelmap.array, sphere_label(oblique))
    scaled = (oblique.array.astype(np.float64) + 1000.0) / 2000.0
    p = 1.0 / (1.0 + np.exp(-GAIN * (scaled - (THRESHOLD_HU + 1000.0) / 2000.0)))
    expected = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0) + np.where(p < 1, (1 - p) * np.log1p(-p), 0))
    np.testing.assert_allclose(result.entropy.array, expected, atol=2e-4)
    assert result.entropy.array.max() > 0.3  # voxels near the threshold exist, so the comparison means something


@pytest.mark.parametrize("code", ["RAS", "SLP", "IRA"])
def test_uncertainty_of_a_permuted_or_flipped_copy_is_the_same_volume(resampling_model, code):
    ct = phantom_ct(spacing=(1.3, 1.1, 2.4), direction=np.diag([-1.0, 1.0, 1.0]))
    reference = segment_uncertain(ct, resampling_model, Progress())
    copy = reorient(ct, code)
    result = segment_uncertain(copy, resampling_model, Progress())
    assert result.entropy.same_grid(copy) and result.mutual_information.same_grid(copy)
    back = reorient(result.entropy, "LPS").array
    np.testing.assert_allclose(back, reorient(reference.entropy, "LPS").array, atol=1e-5)


def test_segment_without_uncertainty_is_unchanged_by_the_tta_path(threshold_model):
    ct = phantom_ct()
    plain, _ = segment_image(ct, threshold_model)
    with_tta = segment_uncertain(ct, threshold_model, Progress())
    np.testing.assert_array_equal(plain.array, with_tta.labelmap.array)


def test_segment_cli_writes_uncertainty_beside_the_labelmap_and_reports_its_cost(edge_model, tmp_path):
    source = write_image(two_boxes(), tmp_path / "case.nii.gz")
    out = tmp_path / "case_labels.nrrd"
    model = str(edge_model.spec.folder)
    done = lesionseg(
        "segment", "--model", model, "--input", str(source), "--output", str(out), "--device", "cpu",
        "--backend", "torch", "--uncertainty", "tta", "--progress", "jsonl",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    result = events[-1]
    assert result["event"] == "result" and result["uncertainty"]["passes"] == 4
    assert len(result["uncertainty"]["pass_seconds"]) == 4
    assert any(e.get("tta_passes") == 4 for e in events if e["event"] == "progress")
    entropy = read_image(tmp_path / "case_labels_entropy.nrrd")
    assert entropy.same_grid(read_image(source)) and entropy.array.dtype == np.float32
    assert read_image(tmp_path / "case_labels_mutual_information.nrrd").array.max() > 0.5
    table = json.loads((tmp_path / "case_labels_lesions.json").read_text())
    assert len(table["lesions"]) == 2 and "confidence" in table["lesions"][0] and table["passes"] == 4
    csv_lines = (tmp_path / "case_labels_lesions.csv").read_text().splitlines()
    assert csv_lines[0].startswith("id,label,name,voxels,volume_mm3,confidence") and len(csv_lines) == 3
    again = lesionseg("segment", "--model", model, "--input", str(source), "--output", str(tmp_path / "new.nrrd"),
                      "--uncertainty", "tta", "--device", "cpu", "--backend", "torch")  # fmt: skip
    assert again.returncode == 0, again.stderr
    refused = lesionseg("segment", "--model", model, "--input", str(source), "--output", str(tmp_path / "x.nrrd"),
                        "--uncertainty", "mc")  # fmt: skip
    assert refused.returncode == 2 and "invalid choice: 'mc'" in refused.stderr


def test_an_existing_uncertainty_file_is_refused_without_overwrite(edge_model, tmp_path):
    source = write_image(two_boxes(), tmp_path / "case.nii.gz")
    (tmp_path / "out_entropy.nii.gz").write_bytes(b"kept")
    args = ["segment", "--model", str(edge_model.spec.folder), "--input", str(source), "--output"]
    done = lesionseg(*args, str(tmp_path / "out.nii.gz"), "--uncertainty", "tta")
    assert done.returncode == 2 and "out_entropy.nii.gz already exists" in done.stderr
    assert (tmp_path / "out_entropy.nii.gz").read_bytes() == b"kept"


def test_spec_tta_names_the_flips_and_refuses_unknown_axes():
    data = threshold_spec_dict()
    assert spec_from_dict(data).inference.tta == ("i", "j", "k")
    data["inference"]["tta"] = ["ij", "k"]
    assert spec_from_dict(data).inference.tta == ("ij", "k")
    data["inference"]["tta"] = ["x"]
    with pytest.raises(ValueError, match="inference/tta"):
        spec_from_dict(data)
    data["inference"]["tta"] = []  # a model trained without flips: one pass
    assert spec_from_dict(data).inference.tta == ()
    del data["inference"]["tta"]  # a spec that does not say: no flips either, never a guess
    assert spec_from_dict(data).inference.tta == ()


def test_segment_file_refuses_an_unknown_uncertainty_method_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="unknown uncertainty method 'mc'"):
        segment_file("threshold", tmp_path / "none.nii.gz", tmp_path / "out.nii.gz", uncertainty="mc")


def test_warm_worker_request_with_uncertainty_writes_it_beside_the_labelmap(edge_model, tmp_path):
    from lesionseg.jobs import EventKind, JobState, WarmWorker

    source = write_image(two_boxes(), tmp_path / "case.nii.gz")
    worker = WarmWorker().start()
    try:
        request = worker.submit(str(edge_model.spec.folder), source, tmp_path / "out.nii.gz", "cpu", uncertainty="tta")
        assert request.wait(300) is JobState.SUCCEEDED, (request.error_text, worker.job.stderr_text[-2000:])
        result = next(e.data for e in request.poll() if e.kind is EventKind.RESULT)
        assert result["uncertainty"]["passes"] == 4
        assert read_image(tmp_path / "out_mutual_information.nii.gz").same_grid(read_image(source))
        assert len(json.loads((tmp_path / "out_lesions.json").read_text())["lesions"]) == 2
    finally:
        worker.close()


def test_a_spec_with_flip_tta_runs_each_member_once_unaveraged(tmp_path):
    # Were the spec's flip_tta averaging applied inside every member, the members would all agree (MI 0).
    folder = tmp_path / "edge_flip_tta"
    write_model_folder(folder, threshold_spec_dict("edge", spacing=None, roi=(48, 48, 48), flip_tta=True), edge_state())
    result = segment_uncertain(two_boxes(), load_model(folder, "cpu", backend="torch"), Progress())
    assert result.mutual_information.array.max() == pytest.approx(binary_entropy(0.25), rel=1e-5)


def test_a_model_trained_without_flips_gives_the_same_labels_with_uncertainty_as_without(tmp_path):
    # The shipped demo spleen model never saw a mirrored image (its recipe turns flips off). Flipped along i, j and
    # k and averaged with the unflipped pass, it found 0.3 mL of a 167 mL spleen (98 mL unflipped) in an unseen
    # phantom: uncertainty must not change what the radiologist is shown.
    from lesionseg.data import SynthOptions, generate_case

    case = generate_case(5353, 0, SynthOptions(size="small"))  # case001 of seed 5353
    source = write_image(case.image, tmp_path / "ct.nii.gz")
    plain = lesionseg("segment", "--model", "demo-spleen", "--input", str(source), "--output",
                      str(tmp_path / "plain.nii.gz"), "--device", "cpu")  # fmt: skip
    assert plain.returncode == 0, plain.stderr[-2000:]
    unsure = lesionseg("segment", "--model", "demo-spleen", "--input", str(source), "--output",
                       str(tmp_path / "unsure.nii.gz"), "--device", "cpu", "--uncertainty", "tta")  # fmt: skip
    assert unsure.returncode == 0, unsure.stderr[-2000:]
    labels = read_image(tmp_path / "plain.nii.gz").array
    spleen_ml = float((labels == 1).sum()) * float(np.prod(case.image.spacing)) / 1000.0
    assert spleen_ml > 50.0  # the model finds the spleen here
    assert np.array_equal(read_image(tmp_path / "unsure.nii.gz").array, labels)
    assert read_image(tmp_path / "unsure_mutual_information.nii.gz").array.max() == 0.0
    assert read_image(tmp_path / "unsure_entropy.nii.gz").array.max() > 0.0
    document = json.loads((tmp_path / "unsure_lesions.json").read_text())
    assert document["passes"] == 1 and document["flips"] == ["none"]
    assert "declares no test-time flips" in document["note"] and "declares no test-time flips" in unsure.stderr


def test_a_trained_models_spec_declares_the_flips_its_training_used():
    from lesionseg.training import load_config
    from lesionseg.training.export import trained_flips

    assert trained_flips(load_config("tiny")) == ["i", "j", "k"]  # flip_prob 0.5
    assert trained_flips(load_config("spleen")) == ["i", "j", "k"]  # 0.1
    flat = load_config("tiny")
    flat["augmentation"]["flip_prob"] = 0.0
    assert trained_flips(flat) == []
    flat["augmentation"]["flip_prob"], flat["network"]["slice_mode"] = 0.5, True
    assert trained_flips(flat) == ["i", "j"]  # slices are flipped within their plane only
