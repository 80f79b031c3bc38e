"""The CPU network through OpenVINO: same logits as torch, a cache that is rebuilt when wrong, the backend order."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")

from support.tiny_models import phantom_ct, sphere_label, threshold_spec_dict, threshold_state, write_model_folder

from lesionseg.inference.openvino_backend import (
    OpenVINONetwork,
    bf16_supported,
    choose_backend,
    openvino_network,
)
from lesionseg.inference.pipeline import load_model, segment_image
from lesionseg.inference.window import sliding_window
from lesionseg.io import read_image, write_image
from lesionseg.models.network import build_network

REPOSITORY = Path(__file__).resolve().parents[2]

SMALL_NETWORKS = {
    "UNet": {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "channels": [8, 16, 32],
        "strides": [2, 2],
        "num_res_units": 1,
        "norm": "batch",
    },
    "SegResNet": {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "init_filters": 8,
        "blocks_down": [1, 1, 1],
        "blocks_up": [1, 1],
    },
    "DynUNet": {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "kernel_size": [3, 3, 3],
        "strides": [1, 2, 2],
        "upsample_kernel_size": [2, 2],
        "filters": [8, 16, 32],
        "norm_name": "instance",
    },
}

# OpenVINO 2026.4's CPU plugin is further from the float64 result on DynUNet (instance norm, here on windows that
# are mostly air) than torch: measured 2.7e-3 against float64 where torch float32 is 1.3e-5 (logits up to 8.4),
# with the same two-pass variance written out by hand.  UNet and SegResNet agree to 1e-4.
TOLERANCE = {"UNet": 1e-4, "SegResNet": 1e-4, "DynUNet": 5e-3}


@pytest.fixture()
def model_folder(tmp_path):
    return write_model_folder(tmp_path / "threshold", threshold_spec_dict(), threshold_state())


@pytest.mark.parametrize("name", sorted(SMALL_NETWORKS))
def test_openvino_logits_equal_torch_on_phantom_windows(name, tmp_path):
    import torch

    torch.manual_seed(0)
    network = build_network(name, SMALL_NETWORKS[name]).eval()
    with torch.no_grad():  # batch-norm statistics that are not the identity, as a trained network has
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    ct = phantom_ct(shape_kji=(40, 56, 56))
    volume = torch.from_numpy(np.clip((ct.array.astype(np.float32) + 200.0) / 400.0, 0.0, 1.0))[None]
    args = dict(roi_ijk=(32, 32, 32), num_classes=2, overlap=0.25, sw_batch_size=3, device="cpu")
    reference = sliding_window(volume, network, **args).logits
    compiled = OpenVINONetwork(network, "0" * 64, tmp_path / "cache")
    logits = sliding_window(volume, compiled, **args).logits
    assert compiled.rebuilt == ["network-1x32x32x32-fp32.blob"]
    np.testing.assert_allclose(logits.numpy(), reference.numpy(), rtol=TOLERANCE[name], atol=TOLERANCE[name])
    agreement = float((logits.argmax(0) == reference.argmax(0)).float().mean())
    assert agreement >= (1.0 if TOLERANCE[name] <= 1e-4 else 0.9999)


def test_segment_through_openvino_reuses_its_cached_network(model_folder):
    ct = phantom_ct()
    first = load_model(str(model_folder), "cpu", backend="openvino")
    labels, _ = segment_image(ct, first, device="cpu")
    assert first.backend == "openvino" and first.precision == "fp32"
    assert first.network.rebuilt == ["network-1x32x32x32-fp32.blob"]
    np.testing.assert_array_equal(labels.array, sphere_label(ct))
    again = load_model(str(model_folder), "cpu", backend="openvino")
    segment_image(ct, again, device="cpu")
    assert again.network.rebuilt == [], "a valid cached network must be imported, not converted again"


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "key not JSON", "key names another OpenVINO"])
def test_corrupt_cached_network_is_rebuilt(model_folder, damage):
    ct = phantom_ct()
    segment_image(ct, load_model(str(model_folder), "cpu", backend="openvino"), device="cpu")
    blob = model_folder / ".openvino" / "network-1x32x32x32-fp32.blob"
    key = blob.with_suffix(".json")
    data = bytearray(blob.read_bytes())
    if damage == "flipped byte":
        data[len(data) // 2] ^= 0xFF
        blob.write_bytes(bytes(data))
    elif damage == "truncated":
        blob.write_bytes(bytes(data[: len(data) // 3]))
    elif damage == "key not JSON":
        key.write_text("{not json")
    else:
        key.write_text(json.dumps(dict(json.loads(key.read_text()), openvino="2020.1.0")))
    model = load_model(str(model_folder), "cpu", backend="openvino")
    labels, _ = segment_image(ct, model, device="cpu")
    assert model.network.rebuilt == [blob.name]
    np.testing.assert_array_equal(labels.array, sphere_label(ct))
    assert load_model(str(model_folder), "cpu", backend="openvino").network._cached((1, 32, 32, 32)) is not None


def test_changed_weights_rebuild_the_cached_network(model_folder):
    from lesionseg.models.weights import file_hashes

    # Halved biases move the threshold: a network kept from the old weights would label other voxels.
    ct = phantom_ct()
    segment_image(ct, load_model(str(model_folder), "cpu", backend="openvino"), device="cpu")
    spec = threshold_spec_dict()
    old = file_hashes(model_folder / spec["weights"]["path"])["sha256"]
    state = {k: (v * 0.5 if k.endswith("bias") else v) for k, v in threshold_state().items()}
    write_model_folder(model_folder, spec, state)
    assert file_hashes(model_folder / spec["weights"]["path"])["sha256"] != old
    model = load_model(str(model_folder), "cpu", backend="openvino")
    labels, _ = segment_image(ct, model, device="cpu")
    assert model.network.rebuilt == ["network-1x32x32x32-fp32.blob"]
    key = json.loads((model_folder / ".openvino" / "network-1x32x32x32-fp32.json").read_text())
    assert key["weights_sha256"] == file_hashes(model_folder / spec["weights"]["path"])["sha256"]
    torch_labels, _ = segment_image(ct, str(model_folder), device="cpu", backend="torch")
    np.testing.assert_array_equal(labels.array, torch_labels.array)


def test_backend_order_auto_takes_openvino_on_the_cpu_only():
    assert choose_backend("auto", "cpu") == ("openvino", None)
    assert choose_backend("openvino", "cpu") == ("openvino", None)
    assert choose_backend("torch", "cpu") == ("torch", None)
    assert choose_backend("auto", "cuda") == ("torch", None)
    backend, note = choose_backend("openvino", "cuda")
    assert backend == "torch" and "CPU only" in note
    with pytest.raises(ValueError, match="use one of auto, torch, openvino"):
        choose_backend("onnx", "cpu")


def test_missing_openvino_falls_back_to_torch_with_one_line(model_folder, tmp_path):
    # A real interpreter in which `import openvino` fails, as where the package is not installed.
    ct = write_image(phantom_ct(), tmp_path / "ct.nrrd")
    code = "import sys; sys.modules['openvino'] = None\nfrom lesionseg.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    argv = ["segment", "--model", str(model_folder), "--input", str(ct), "--output", str(tmp_path / "out.nrrd")]
    done = subprocess.run(
        [sys.executable, "-c", code, *argv, "--device", "cpu", "--progress", "jsonl"],
        capture_output=True,
        text=True,
        cwd=REPOSITORY,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    notes = [e["text"] for e in events if e["event"] in ("message", "warning") and "openvino" in e["text"].lower()]
    assert notes == ["openvino is not installed; the network runs on torch (pip install openvino for a faster CPU)"]
    assert events[-1]["backend"] == "torch"
    assert not (model_folder / ".openvino").exists()


def test_segment_command_with_openvino_writes_the_labelmap_torch_writes(model_folder, tmp_path):
    ct = write_image(phantom_ct(spacing=(1.3, 1.1, 2.4)), tmp_path / "ct.nii.gz")
    results = {}
    for backend in ("openvino", "torch"):
        output = tmp_path / f"{backend}.nii.gz"
        done = subprocess.run(
            [sys.executable, "-m", "lesionseg", "segment", "--model", str(model_folder), "--input", str(ct)]
            + ["--output", str(output), "--device", "cpu", "--backend", backend, "--progress", "jsonl"],
            capture_output=True,
            text=True,
            cwd=REPOSITORY,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        results[backend] = json.loads(done.stdout.splitlines()[-1])
        assert results[backend]["backend"] == backend and results[backend]["precision"] == "fp32"
    openvino, torch = (read_image(results[b]["output"]).array for b in ("openvino", "torch"))
    assert np.count_nonzero(torch) > 1000
    np.testing.assert_array_equal(openvino, torch)


def test_bf16_runs_as_openvino_reports(model_folder):
    model = load_model(str(model_folder), "cpu", backend="openvino", precision="bf16")
    if bf16_supported():
        assert model.precision == "bf16" and model.notes == ()
    else:
        # This CPU (AVX2, no AVX-512 BF16 or AMX): the run says so and reports the fp32 it runs at.
        assert model.precision == "fp32"
        assert len(model.notes) == 1 and model.notes[0].startswith("this CPU has no bf16 (OpenVINO lists FP32")


def test_precision_comes_from_the_spec(tmp_path):
    folder = write_model_folder(tmp_path / "m", threshold_spec_dict(precision="bf16"), threshold_state())
    model = load_model(str(folder), "cpu", backend="torch")
    assert model.precision == "fp32"
    assert model.notes == ("precision bf16 applies to the OpenVINO CPU network; torch runs fp32",)


def test_read_only_model_folder_caches_in_the_user_cache(model_folder, tmp_path, monkeypatch):
    from lesionseg.inference import openvino_backend

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    (model_folder / ".openvino").write_text("a file where the cache folder would go")  # unwritable as a folder
    network = openvino_network(object(), "0" * 64, model_folder, "my model/v1")
    assert network.folder == tmp_path / "user-cache" / "lesionseg" / "openvino" / "my_model_v1"
    assert openvino_backend.cache_folder(None, "x") == tmp_path / "user-cache" / "lesionseg" / "openvino" / "x"


def test_openvino_runs_with_the_thread_count_torch_runs_with(model_folder):
    import torch

    before = torch.get_num_threads()
    window = (1, 32, 32, 32)
    try:
        model = load_model(str(model_folder), "cpu", backend="openvino")
        counts = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            counts.append(model.network.compiled(window).get_property("INFERENCE_NUM_THREADS"))
        # OpenVINO's own default is every core; here each count is torch's, the second from the cached blob.
        assert counts == [1, 2] and model.network.rebuilt == ["network-1x32x32x32-fp32.blob"]
        given = openvino_network(model.network.network, "0" * 64, model_folder / "other", "m", threads=1)
        assert given.compiled(window).get_property("INFERENCE_NUM_THREADS") == 1  # torch is at 2 here
    finally:
        torch.set_num_threads(before)
