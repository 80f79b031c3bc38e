"""Multi-channel (CT + PET) input: a two-channel nnU-Net model gets its PET aligned onto the CT grid.

The PET has its own, coarser grid and a larger field of view, as a PET/CT's PET does. The model (hand-set, see
``nnunet_models.hand_set_pet_ct``) answers lesion only where CT > 120 HU *and* PET > 4 SUV, so the answer is right
only if the PET arrives on the CT's voxels: it is compared with the answer computed from a PET made on the CT grid.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from support import nnunet_models as nm

from lesionseg.image import Image
from lesionseg.inference.channels import ChannelError, ChannelInput, align_channels, assign_channels, read_channel
from lesionseg.inference.nnunet import segment_file_nnunet

REPO = Path(__file__).resolve().parents[2]
CT_SHAPE = (22, 38, 42)  # z, y, x; spacing (x, y, z) = (1, 1, 2) mm, origin 0, identity direction
LESION_CENTRE = np.array([42 * 0.35, 38 * 0.4, 22 * 2.0 * 0.5])  # phantom()'s sphere, in (x, y, z) mm
HOT_CENTRE = LESION_CENTRE + [6.0, 0.0, 0.0]  # overlaps the CT lesion only in part: AND is a lens
HOT_RADIUS = 9.0


def pet_value(x, y, z):
    c = HOT_CENTRE
    return np.where((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= HOT_RADIUS**2, 8.0, 1.0)


@pytest.fixture(scope="module")
def pet_ct(tmp_path_factory):
    root = tmp_path_factory.mktemp("petct")
    model = nm.build_pet_ct_dataset(root / "models").configuration("3d_fullres")
    ct, _ = nm.phantom(shape_zyx=CT_SHAPE, seed=3)
    ct_path = nm.write_case(root / "case_0000.nii.gz", ct)
    pet, spacing, origin = nm.pet_phantom(HOT_CENTRE, HOT_RADIUS, origin=(-29.3, -24.1, -11.2))
    pet_path = nm.write_case(root / "case_0001.nii.gz", pet, spacing_xyz=spacing, origin=origin)
    # The answer on the CT grid: the PET evaluated at the CT's own voxel centres.
    k, j, i = np.meshgrid(*(np.arange(n) for n in CT_SHAPE), indexing="ij")
    pet_on_ct = pet_value(i * 1.0, j * 1.0, k * 2.0)
    expected = ((ct > nm.CT_LESION_HU) & (pet_on_ct > nm.PET_LESION_SUV)).astype(np.uint8)
    return model, ct_path, pet_path, ct, expected


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def test_segment_pet_ct_with_a_two_channel_nnunet_model_from_the_command_line(pet_ct, tmp_path):
    model, ct_path, pet_path, ct, expected = pet_ct
    ct_only = (ct > nm.CT_LESION_HU).astype(np.uint8)
    assert dice(ct_only, expected) < 0.75  # the PET must matter for this test to mean anything
    outputs = []
    for n, args in enumerate(
        (
            ["--input", str(ct_path), "--input", str(pet_path)],
            ["--channel", f"PET={pet_path}", "--channel", f"ct={ct_path}"],
        )
    ):
        output = tmp_path / f"seg{n}.nii.gz"
        run = subprocess.run(
            [sys.executable, "-m", "lesionseg", "segment", "--model", str(model), *args, "--output", str(output),
             "--device", "cpu"],  # fmt: skip
            cwd=REPO, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        outputs.append(output)
    ours = sitk.ReadImage(str(outputs[0]))
    reference = sitk.ReadImage(str(ct_path))
    for name in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert np.allclose(getattr(ours, name)(), getattr(reference, name)(), atol=1e-4), name  # the CT's grid
    labels = sitk.GetArrayFromImage(ours)
    assert dice(labels, expected) > 0.9, dice(labels, expected)
    assert np.array_equal(labels, sitk.GetArrayFromImage(sitk.ReadImage(str(outputs[1]))))  # by name = in order


def test_a_missing_channel_is_refused_naming_it(pet_ct, tmp_path):
    model, ct_path, _, _, _ = pet_ct
    with pytest.raises(
        ChannelError, match="channel\\(s\\) PET missing: this model needs 2 images in the order CT, PET"
    ):
        segment_file_nnunet(model, ct_path, tmp_path / "seg.nii.gz", "cpu")
    with pytest.raises(ChannelError, match="channel\\(s\\) PET missing.*--channel PET=PATH"):
        segment_file_nnunet(model, [], tmp_path / "seg.nii.gz", "cpu", named_channels=[f"CT={ct_path}"])
    with pytest.raises(ChannelError, match="'MR': the model has no such channel; its channels are CT, PET"):
        assign_channels(["CT", "PET"], named=["CT=a", "MR=b"])
    assert not (tmp_path / "seg.nii.gz").exists()


def test_extra_inputs_are_refused(pet_ct, tmp_path):
    model, ct_path, pet_path, _, _ = pet_ct
    with pytest.raises(ChannelError, match="3 inputs given but this model takes 2 \\(CT, PET\\).*extra.*case_0001"):
        segment_file_nnunet(model, [ct_path, pet_path, pet_path], tmp_path / "seg.nii.gz", "cpu")
    cli = subprocess.run(
        [sys.executable, "-m", "lesionseg", "segment", "--model", str(model), "--input", str(ct_path), "--input",
         str(pet_path), "--input", str(pet_path), "--output", str(tmp_path / "seg.nii.gz"), "--device", "cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert cli.returncode != 0 and "3 inputs given but this model takes 2" in cli.stderr, cli.stderr[-2000:]


def test_further_channel_is_resampled_linearly_onto_the_first_grid(pet_ct):
    _, ct_path, pet_path, _, _ = pet_ct
    ct, pet = read_channel("CT", ct_path), read_channel("PET", pet_path)
    aligned = align_channels([ct, pet])
    assert aligned[0] is ct.image and aligned[1].same_grid(ct.image)
    # Linear: a value between the two SUV levels appears at the sphere's edge, and far from it the PET's own values.
    values = np.unique(np.round(aligned[1].array, 3))
    assert values.min() == pytest.approx(1.0) and values.max() == pytest.approx(8.0)
    assert np.any((aligned[1].array > 1.5) & (aligned[1].array < 7.5))
    # At a CT voxel that is a PET voxel centre too, the value is the PET's own.
    centre = np.round(ct.image.index(HOT_CENTRE)).astype(int)
    assert aligned[1].array[centre[2], centre[1], centre[0]] == pytest.approx(8.0)


def test_channels_that_do_not_overlap_in_space_are_refused():
    ct = Image(np.zeros((5, 6, 7), np.float32), (1, 1, 2), (0, 0, 0))
    far = Image(np.ones((5, 6, 7), np.float32), (2, 2, 2), (0, 0, 500))
    with pytest.raises(ChannelError, match="channel 'PET' \\(pet.nii\\) does not overlap channel 'CT'.*LPS"):
        align_channels([ChannelInput("CT", "ct.nii", ct), ChannelInput("PET", "pet.nii", far)])
    # Touching one corner is overlap enough to be fed (outside the PET is 0).
    near = Image(np.ones((5, 6, 7), np.float32), (2, 2, 2), (6.0, 5.0, 8.0))
    aligned = align_channels([ChannelInput("CT", "ct.nii", ct), ChannelInput("PET", "pet.nii", near)])
    assert 0 < np.count_nonzero(aligned[1].array) < aligned[1].array.size


def test_dicom_channels_in_different_frames_of_reference_are_refused(tmp_path):
    from lesionseg.dicom.write import write_ct_series

    image = Image(np.full((4, 8, 8), 40.0, np.float32), (1, 1, 2), (0, 0, 0))
    write_ct_series(image, tmp_path / "ct", frame_of_reference_uid="1.2.826.0.1.3680043.2.1125.1")
    write_ct_series(image, tmp_path / "other", frame_of_reference_uid="1.2.826.0.1.3680043.2.1125.2")
    write_ct_series(image, tmp_path / "same", frame_of_reference_uid="1.2.826.0.1.3680043.2.1125.1")
    ct, other = read_channel("CT", tmp_path / "ct"), read_channel("PET", tmp_path / "other")
    assert ct.frame_of_reference == "1.2.826.0.1.3680043.2.1125.1" and ct.modality == "CT"
    with pytest.raises(ChannelError, match="channel 'PET' .* another frame of reference.*register them first"):
        align_channels([ct, other])
    assert len(align_channels([ct, read_channel("PET", tmp_path / "same")])) == 2


def test_own_single_channel_model_with_two_inputs_is_refused(tmp_path):
    cli = subprocess.run(
        [sys.executable, "-m", "lesionseg", "segment", "--model", "demo-lesion", "--input", "a.nii.gz", "--input",
         "b.nii.gz", "--output", str(tmp_path / "seg.nii.gz")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=None,
    )  # fmt: skip
    assert cli.returncode != 0
    assert "2 inputs given but this model takes 1 (image); remove the extra input(s): b.nii.gz" in cli.stderr, (
        cli.stderr
    )


def test_own_model_spec_names_its_input_channels_and_their_modalities():
    from support.tiny_models import threshold_spec_dict

    from lesionseg.models.spec import spec_from_dict

    base = threshold_spec_dict()
    base["network"]["parameters"].pop("in_channels", None)
    two = {**base, "input_channels": 2, "modality": "CT", "inputs": [{"name": "CT"}, {"name": "PET", "modality": "PT"}]}
    spec = spec_from_dict(two)
    assert spec.channel_names == ["CT", "PET"]
    assert (spec.expected_modality(0), spec.expected_modality(1)) == ("CT", "PT")  # PET's own; CT from the spec's
    with pytest.raises(IndexError, match="has 2 input channel\\(s\\), not 3"):
        spec.expected_modality(2)
    with pytest.raises(ValueError, match="inputs names 1 channel\\(s\\) but input_channels is 2"):
        spec_from_dict({**two, "inputs": [{"name": "CT"}]})
    with pytest.raises(ValueError, match="inputs names repeat"):
        spec_from_dict({**two, "inputs": [{"name": "CT"}, {"name": "ct"}]})
    with pytest.raises(ValueError, match="invalid at inputs/1/modality"):
        spec_from_dict({**two, "inputs": [{"name": "CT"}, {"name": "PET", "modality": "pet"}]})
    single = spec_from_dict(base)  # a spec without inputs: unchanged, one channel
    assert single.inputs == () and single.channel_names == ["image"] and single.expected_modality(0) is None
