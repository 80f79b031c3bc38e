"""The lesion recipe's levers (issue 18): two intensity windows as channels, label-class sampling, and training
without lesion-free cases; each checked in the config, and the windows carried into the shipped model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from support.cli import lesionseg
from support.training_data import LESION, ORGAN, one_torch_thread, sphere_case  # noqa: F401

from lesionseg.io import read_image, write_image
from lesionseg.training import load_config, train

WINDOWS = [[-200.0, 1500.0], [-150.0, 250.0]]


def test_recipe_options_are_checked_naming_the_key() -> None:
    defaults = load_config({})
    assert defaults["preprocessing"]["windows"] == [] and defaults["augmentation"]["sampling"] == "pos_neg"
    assert defaults["training"]["exclude_lesion_free"] is False
    assert load_config({"preprocessing": {"windows": [[-200, 1500], [-150, 250]]}})["preprocessing"]["windows"] == (
        WINDOWS
    )
    for bad, message in (
        ([-200, 1500], r"\[low, high\] pairs.*-200 is not a \[low, high\] pair"),
        ([[-200, 1500]], "one window is preprocessing.intensity's range; give two or more"),
        ([[300, 100], [0, 1]], r"window \[300, 100\] has low 300 not below high 100"),
        ([[0, 1, 2], [0, 1]], r"\[0, 1, 2\] is not a \[low, high\] pair"),
        ("bone", "must be a list of"),
    ):
        with pytest.raises(ValueError, match=f"config preprocessing.windows: .*{message}"):
            load_config({"preprocessing": {"windows": bad}})
    with pytest.raises(
        ValueError, match="config augmentation.sampling: 'classes' is not one of pos_neg, label_classes"
    ):
        load_config({"augmentation": {"sampling": "classes"}})
    with pytest.raises(ValueError, match="class_ratios: non-negative numbers, not all 0"):
        load_config({"augmentation": {"sampling": "label_classes", "class_ratios": [0, 0]}})
    with pytest.raises(ValueError, match="class_ratios: only used with augmentation.sampling: label_classes"):
        load_config({"augmentation": {"class_ratios": [1, 1]}})
    with pytest.raises(ValueError, match="positive/negative: non-negative, not both 0"):
        load_config({"augmentation": {"positive": 0.0, "negative": 0.0}})
    with pytest.raises(ValueError, match="config training.exclude_lesion_free: must be true/false"):
        load_config({"training": {"exclude_lesion_free": "yes"}})


def test_training_and_inference_window_the_same_volume_identically() -> None:
    from lesionseg.inference.pipeline import _channel_scaling
    from lesionseg.models.spec import IntensitySpec
    from lesionseg.training.data import intensity_transform

    hu = torch.tensor([[[-1000.0, -200.0, -150.0], [50.0, 250.0, 650.0], [1500.0, 3000.0, 100.0]]])
    trained = intensity_transform(load_config({})["preprocessing"]["intensity"], WINDOWS)({"image": hu[None]})
    shipped = _channel_scaling(IntensitySpec("range", -57, 164, 0, 1, True), [tuple(w) for w in WINDOWS])(hu, 0)
    assert trained["image"].shape == (2, *hu.shape) and torch.equal(trained["image"], shipped)
    bone, soft = shipped[0].flatten().tolist(), shipped[1].flatten().tolist()
    assert bone[:2] == [0.0, 0.0] and bone[6:8] == [1.0, 1.0] and bone[5] == pytest.approx(850 / 1700)
    assert soft[:3] == [0.0, 0.0, 0.0] and soft[4] == 1.0 and soft[3] == pytest.approx(200 / 400)
    with pytest.raises(ValueError, match="this dataset has 2 image channels"):
        intensity_transform({"kind": "range", "a_min": 0.0, "a_max": 1.0, "b_min": 0.0, "b_max": 1.0, "clip": True},
                            WINDOWS)({"image": torch.zeros(2, 4, 4, 4)})  # fmt: skip


def test_label_class_sampling_centres_crops_on_the_chosen_label(tmp_path: Path) -> None:
    from monai.transforms import Compose
    from monai.utils import set_determinism

    from lesionseg.training.data import deterministic_transforms, random_transforms

    image, label = sphere_case(3, size=32)
    lesion_voxels = int((label.array == LESION).sum())
    assert 0 < lesion_voxels < 0.05 * label.array.size  # small against a 16³ crop's share of the volume
    config = load_config({"base": "tiny", "augmentation": {"patch_size": [16, 16, 16], "samples_per_volume": 4,
                          "sampling": "label_classes", "class_ratios": [0, 0, 1]}})  # fmt: skip
    set_determinism(seed=3)
    write_image(image, tmp_path / "image.nii.gz")
    write_image(label, tmp_path / "label.nii.gz")
    item = {"image": str(tmp_path / "image.nii.gz"), "label": str(tmp_path / "label.nii.gz")}
    data = Compose(deterministic_transforms(config))(item)
    crops = [c for _ in range(10) for c in Compose(random_transforms(config, num_classes=3))(data)]
    assert len(crops) == 40 and all(bool((c["label"] == LESION).any()) for c in crops)
    background = load_config({"base": "tiny", "augmentation": {"patch_size": [16, 16, 16], "sampling": "label_classes",
                              "class_ratios": [1, 0, 0], "flip_prob": 0.0}})  # fmt: skip
    centre_classes = [
        int(c["label"][0, 8, 8, 8])
        for _ in range(10)
        for c in Compose(random_transforms(background, num_classes=3))(data)
    ]
    assert set(centre_classes) == {0}
    with pytest.raises(ValueError, match="class_ratios gives 3 ratios, but the labels have 2 classes"):
        random_transforms(config, num_classes=2)
    set_determinism(seed=None)


def _two_lesions(tmp_path: Path) -> dict:
    """A 40³ volume (2 mm) holding a 12³-voxel lesion and a 2³-voxel one, far apart, as a cached training item."""
    from monai.transforms import Compose

    from lesionseg.image import Image
    from lesionseg.training.data import deterministic_transforms

    label = np.zeros((40, 40, 40), np.uint8)
    label[4:16, 4:16, 4:16] = 1
    label[30:32, 30:32, 30:32] = 1
    hu = np.where(label > 0, 300, 40).astype(np.int16)
    image = Image(hu, spacing=(2.0, 2.0, 2.0))
    write_image(image, tmp_path / "image.nii.gz")
    write_image(image.with_array(label), tmp_path / "label.nii.gz")
    config = load_config({"base": "tiny", "augmentation": {"patch_size": [8, 8, 8], "flip_prob": 0.0}})
    item = {"image": str(tmp_path / "image.nii.gz"), "label": str(tmp_path / "label.nii.gz")}
    return Compose(deterministic_transforms(config))(item)


def test_component_sampling_draws_a_small_lesion_as_often_as_a_large_one(tmp_path: Path) -> None:
    from monai.transforms import Compose, Randomizable
    from monai.utils import set_determinism

    from lesionseg.training.data import random_transforms
    from lesionseg.training.loop import _random_sources

    data = _two_lesions(tmp_path)

    def small_share(sampling: str, positive: float = 1.0, negative: float = 0.0) -> tuple[float, list]:
        config = load_config({"base": "tiny", "augmentation": {"patch_size": [8, 8, 8], "flip_prob": 0.0,
                              "samples_per_volume": 4, "sampling": sampling, "positive": positive,
                              "negative": negative}})  # fmt: skip
        set_determinism(seed=5)
        chain = Compose(random_transforms(config))
        crops = [c for _ in range(60) for c in chain(data)]
        small = [bool(np.asarray(c["label"])[0].sum() in range(1, 9)) for c in crops]
        return sum(small) / len(crops), crops

    by_piece, crops = small_share("components")
    by_voxel, _ = small_share("pos_neg")
    # 8 of 1,736 lesion voxels are the small lesion's: voxel-uniform crops almost never find it.
    assert 0.35 < by_piece < 0.65 and by_voxel < 0.05, (by_piece, by_voxel)
    assert all(np.asarray(c["label"]).any() and tuple(c["label"].shape) == (1, 8, 8, 8) for c in crops)
    assert all(np.array_equal(np.asarray(c["image"]) > 0.5, np.asarray(c["label"]) > 0) for c in crops)
    again = small_share("components")[1]
    assert all(np.array_equal(a["label"], b["label"]) for a, b in zip(crops, again, strict=True)), "not seeded"
    background = small_share("components", positive=0.0, negative=1.0)[1]
    assert not any(np.asarray(c["label"])[0, 4, 4, 4] for c in background)
    # A resumed training restores the crop's random state with the others'.
    config = load_config({"base": "tiny", "augmentation": {"sampling": "components"}})
    assert any(
        type(t).__name__ == "RandCropByComponentd" for t in _random_sources(random_transforms(config), Randomizable)
    )
    set_determinism(seed=None)


def test_a_model_trains_and_resumes_with_component_sampling(tmp_path: Path) -> None:
    from lesionseg.datasets import add_case, init_dataset

    dataset = tmp_path / "spheres"
    init_dataset(dataset, {ORGAN: "organ", LESION: "lesion"}, name="Spheres", lesion_labels=[LESION])
    for seed in range(4):
        add_case(dataset, *sphere_case(seed, size=24), case_id=f"s{seed}")
    config = {"base": "tiny", "augmentation": {"patch_size": [16, 16, 16], "sampling": "components", "positive": 2.0},
              "training": {"epochs": 2, "amp": False, "seed": 1}}  # fmt: skip
    train(dataset, config, tmp_path / "model", epochs=1)
    train(dataset, None, tmp_path / "model", epochs=2, resume=True)
    record = json.loads((tmp_path / "model" / "training.json").read_text())
    assert record["last"]["epoch"] == 2 and record["config"]["augmentation"]["sampling"] == "components"


@pytest.mark.slow
def test_windowed_model_trained_without_lesion_free_cases_ships_its_windows(tmp_path: Path) -> None:
    from lesionseg.datasets import add_case, init_dataset
    from lesionseg.models.spec import load_spec

    dataset = tmp_path / "spheres"
    init_dataset(dataset, {ORGAN: "organ", LESION: "lesion"}, name="Spheres", lesion_labels=[LESION])
    for seed in range(5):
        add_case(dataset, *sphere_case(seed, size=32, lesion=seed != 1), case_id=f"s{seed}")
    config = {
        "base": "tiny",
        "model": {"id": "windowed"},
        "preprocessing": {"windows": WINDOWS},
        "augmentation": {"sampling": "label_classes", "class_ratios": [1, 1, 2]},
        "training": {"epochs": 1, "amp": False, "seed": 1, "validation_fraction": 0.2, "exclude_lesion_free": True},
    }
    output = tmp_path / "model"
    train(dataset, config, output)
    record = json.loads((output / "training.json").read_text())
    trained_on = record["dataset"]["train_cases"]
    assert "s1" not in trained_on and len(trained_on) + len(record["dataset"]["validation_cases"]) == 4
    spec_data = json.loads((output / "spec.json").read_text())
    assert spec_data["preprocessing"]["windows"] == WINDOWS and spec_data["input_channels"] == 1
    assert spec_data["network"]["parameters"]["in_channels"] == 2
    spec = load_spec(output / "spec.json")
    assert spec.preprocessing.windows == ((-200.0, 1500.0), (-150.0, 250.0))

    image, _ = sphere_case(9, size=32)
    write_image(image, tmp_path / "ct.nii.gz")
    done = lesionseg("segment", "--model", str(output), "--input", str(tmp_path / "ct.nii.gz"),
                     "--output", str(tmp_path / "seg.nii.gz"), "--device", "cpu", timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert set(np.unique(read_image(tmp_path / "seg.nii.gz").array)) <= {0, ORGAN, LESION}

    spec_data["input_channels"] = 2
    from lesionseg.models.spec import spec_from_dict

    with pytest.raises(ValueError, match="windows splits one CT image into channels, but input_channels is 2"):
        spec_from_dict(spec_data)
    spec_data["input_channels"] = 1
    spec_data["preprocessing"]["windows"] = [*WINDOWS, [0.0, 100.0]]
    with pytest.raises(ValueError, match="3 windows of 1 image give 3 network channels, but .* in_channels is 2"):
        spec_from_dict(spec_data)
    config["training"]["exclude_lesion_free"] = True
    init_dataset(tmp_path / "none", {ORGAN: "organ", LESION: "lesion"}, name="None", lesion_labels=[LESION])
    for seed in range(3):
        add_case(tmp_path / "none", *sphere_case(seed, size=32, lesion=False), case_id=f"n{seed}")
    with pytest.raises(ValueError, match="exclude_lesion_free: no training case holds a lesion label"):
        train(tmp_path / "none", config, tmp_path / "model-none")


def test_deep_supervision_trains_every_head_and_infers_with_the_first() -> None:
    from lesionseg.training.loop import _loss
    from lesionseg.training.networks import config_network

    patch = {"patch_size": [16, 16, 16]}
    network = {"name": "DynUNet", "channels": [4, 8, 16, 16], "strides": [1, 2, 2, 2], "deep_supervision": 2}
    config = load_config({"network": network, "augmentation": patch})
    _, params, model = config_network(config, 2)
    assert params["deep_supervision"] is True and params["deep_supr_num"] == 2
    image, label = torch.rand(2, 1, 16, 16, 16), (torch.rand(2, 1, 16, 16, 16) > 0.9).long()
    out = model.train()(image)
    assert tuple(out.shape) == (2, 3, 2, 16, 16, 16)
    loss, plain = _loss(config), _loss(load_config({}))
    # Weights 1, 1/2, 1/4 over the heads: the first head alone is the plain loss.
    expected = sum(w * plain(out[:, h], label) for h, w in enumerate((1.0, 0.5, 0.25)))
    assert float(loss(out, label).detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert tuple(model.eval()(image).shape) == (2, 2, 16, 16, 16)
    for heads, name, strides in ((3, "DynUNet", [1, 2, 2, 2]), (1, "UNet", [2, 2, 2])):
        with pytest.raises(ValueError, match=f"network.deep_supervision: {heads} is not available; DynUNet only"):
            load_config({"network": {**network, "name": name, "strides": strides, "deep_supervision": heads},
                         "augmentation": patch})  # fmt: skip


def test_lesion_v2_preset_feeds_two_windows_to_a_deeply_supervised_dynunet() -> None:
    from lesionseg.training import presets
    from lesionseg.training.networks import config_network

    assert "lesion-v2" in presets()
    config = load_config("lesion-v2")
    assert config["preprocessing"]["windows"] == WINDOWS and config["network"]["name"] == "DynUNet"
    assert config["loss"]["name"] == "DiceFocal" and config["preprocessing"]["spacing"] == [1.0, 1.0, 1.0]
    _, params, module = config_network(config, 2, len(config["preprocessing"]["windows"]))
    assert params["in_channels"] == 2 and params["deep_supr_num"] == 2
    assert sum(p.numel() for p in module.parameters()) > 1_000_000
