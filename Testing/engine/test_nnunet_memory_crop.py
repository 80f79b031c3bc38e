"""nnU-Net result folders get our own runs' safety: the memory plan refuses what cannot fit, and --crop-body.

The memory limit is real (``ulimit -v`` on a ``lesionseg segment`` child, as in test_memory_limits.py); the model
folders are the hand-set nnU-Net models of Testing/support/nnunet_models.py.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from support import nnunet_models as nm
from support.processes import segment_under_address_space_limit

from lesionseg.cli import main
from lesionseg.inference.memory import GIB
from lesionseg.inference.nnunet import predict_nnunet
from lesionseg.inference.nnunet_memory import grid_voxels, plan_nnunet_memory
from lesionseg.io import read_image
from lesionseg.models.nnunet import load_configuration


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> nm.NnunetDataset:
    return nm.build_dataset(tmp_path_factory.mktemp("nnunet"), configurations=("3d_fullres", "2d"), folds=(0,))


def test_memory_estimate_follows_the_plans_grid_folds_and_configuration(dataset):
    fullres = load_configuration(dataset.configuration("3d_fullres"))
    two_d = load_configuration(dataset.configuration("2d"))
    # (z, y, x) at (4, 2, 2) mm onto (2, 1, 1) mm: 8x the voxels; 2D keeps its slices' own z spacing.
    assert grid_voxels(fullres, (10, 20, 30), (4.0, 2.0, 2.0)) == 20 * 40 * 60
    assert grid_voxels(two_d, (10, 20, 30), (4.0, 2.0, 2.0)) == 10 * 40 * 60
    shape, spacing = (40, 100, 100), (4.0, 2.0, 2.0)

    def host(configuration, folds=1):
        return plan_nnunet_memory([(configuration, folds)], shape, spacing, 2, False, "cpu", 0, 64 * GIB).host_bytes

    assert host(fullres) > host(two_d)  # 8x the voxels on the network grid against 4x
    assert host(fullres, folds=2) >= host(fullres)  # a second fold's logits: never less
    # Resampling back to the input grid holds every class's float64 logits on the network grid: at least 8 K T.
    assert host(fullres) >= 8 * 3 * grid_voxels(fullres, shape, spacing)
    small = plan_nnunet_memory([(fullres, 1)], shape, spacing, 2, False, "cpu", 0, GIB // 16)
    assert not small.fits


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status for the address-space room")
def test_nnunet_segment_under_an_address_space_limit_is_refused_before_inference(dataset, tmp_path):
    # A coarse scan (10 x 10 x 20 mm voxels) onto the model's 1 x 1 x 2 mm grid: 1000x the voxels, about 11 GiB.
    image = np.full((40, 100, 100), 40.0, np.float32)
    source = nm.write_case(tmp_path / "coarse_0000.nii.gz", image, spacing_xyz=(10.0, 10.0, 20.0))
    segment_under_address_space_limit(dataset.configuration("3d_fullres"), source, tmp_path / "out.nii.gz", 4 * GIB)


def test_crop_body_equals_the_uncropped_run_inside_the_body_and_is_zero_outside(dataset, tmp_path, capsys):
    body, truth = nm.phantom(shape_zyx=(24, 40, 44), seed=9)
    # Air around the body, wider than the crop's 20 mm margin, and a flipped direction with an offset origin so a
    # labelmap pasted back at the wrong place or on the wrong axis shows.
    ct = np.full((24 + 2 * 12, 40 + 2 * 24, 44 + 2 * 24), -1000.0, np.float32)
    inside = (slice(12, 36), slice(24, 64), slice(24, 68))
    ct[inside] = body
    source = nm.write_case(
        tmp_path / "ct_0000.nii.gz", ct, origin=(12.0, -30.0, 5.5), direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1)
    )
    folder = dataset.configuration("3d_fullres")
    whole, _, info = predict_nnunet(read_image(source), folder, device="cpu")
    assert info["body_crop"] is None
    output = tmp_path / "cropped.nii.gz"
    capsys.readouterr()
    assert main(["segment", "--model", str(folder), "--input", str(source), "--output", str(output),
                 "--device", "cpu", "--crop-body", "--progress", "jsonl"]) == 0  # fmt: skip
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    box = next(e for e in events if e["event"] == "result")["nnunet"]["body_crop"]
    # The crop left air out along every axis (the box is the body plus 20 mm, (x, y, z)).
    assert box == [44 + 40, 40 + 40, 24 + 20]
    cropped = read_image(output)
    assert cropped.same_grid(read_image(source)) and whole.same_grid(cropped)
    labels = np.asarray(cropped.array)
    assert np.array_equal(labels[inside], np.asarray(whole.array)[inside])
    outside = np.ones(labels.shape, bool)
    outside[inside] = False
    assert not labels[outside].any()
    assert 2 * ((labels[inside] == 1) & (truth == 1)).sum() / ((labels[inside] == 1).sum() + (truth == 1).sum()) > 0.9
