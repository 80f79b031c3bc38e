"""Model specs, the registry, safe weights, verified downloads over real HTTP, and MONAI bundle folders."""

from __future__ import annotations

import copy
import functools
import hashlib
import http.server
import io
import json
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from support.tiny_models import phantom_ct, sphere_label, threshold_spec_dict, threshold_state, write_model_folder

from lesionseg.inference import segment_image
from lesionseg.models import (
    ModelRegistry,
    UnsafeArchiveError,
    WeightsError,
    build_network,
    builtin_specs,
    download_weights,
    load_network,
    load_state_dict,
    safe_extract,
    spec_from_bundle,
    spec_from_dict,
)


@pytest.fixture
def http_folder(tmp_path):
    """A real HTTP server on 127.0.0.1 serving ``tmp_path/served``."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_builtin_spleen_spec_is_the_bundle_network_and_preprocessing():
    spec = next(s for s in builtin_specs() if s.id == "spleen_ct_segmentation")
    network = build_network(spec.network_name, spec.network_parameters)
    assert sum(p.numel() for p in network.parameters()) == 4_808_917
    pre, inf = spec.preprocessing, spec.inference
    # compensate: DICOM is correctly oriented, the weights learned on LPS voxels labelled RAS (model-zoo#766)
    assert (pre.orientation, pre.spacing, pre.orientation_quirk) == ("RAS", (1.5, 1.5, 2.0), "compensate")
    assert (pre.intensity.a_min, pre.intensity.a_max, pre.intensity.b_min, pre.intensity.b_max) == (-57, 164, 0, 1)
    assert pre.intensity.clip and inf.roi_size == (96, 96, 96) and inf.sw_batch_size == 4 and inf.overlap == 0.5
    assert spec.weights.md5 == "be4fa95e236df91766147c112ee6fafd" and spec.weights.format == "state_dict"
    assert spec.labels[0].name == "spleen" and spec.labels[0].terminology["type"]["code"] == "78961009"


def test_spec_errors_name_the_field():
    bad = threshold_spec_dict()
    bad["inference"]["roi_size"] = [32, 32]
    with pytest.raises(ValueError, match="inference/roi_size"):
        spec_from_dict(bad)
    bad = threshold_spec_dict()
    bad["labels"].append({"value": 2, "name": "extra"})
    with pytest.raises(ValueError, match="out_channels"):
        spec_from_dict(bad)
    bad = threshold_spec_dict()
    bad["network"]["name"] = "os.system"
    with pytest.raises(ValueError, match="network/name"):
        spec_from_dict(bad)


def test_models_list_shows_builtin_and_user_models_with_weights_status(tmp_path, monkeypatch):
    write_model_folder(tmp_path / "threshold", threshold_spec_dict(), threshold_state())
    monkeypatch.setenv("LESIONSEG_MODELS_DIR", str(tmp_path))
    entries = {e.spec.id: e for e in ModelRegistry().entries()}
    assert entries["threshold"].weights_present and entries["threshold"].verified is True
    assert not entries["spleen_ct_segmentation"].weights_present
    run = subprocess.run([sys.executable, "-m", "lesionseg", "models", "list"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "threshold" in run.stdout and "present, verified" in run.stdout and "0.5.9" in run.stdout
    assert "spleen_ct_segmentation" in run.stdout and "missing" in run.stdout
    # A parameter beats the environment.
    assert ModelRegistry(tmp_path / "elsewhere").root == tmp_path / "elsewhere"


def test_altered_weights_are_refused(tmp_path):
    folder = write_model_folder(tmp_path / "m", threshold_spec_dict(), threshold_state())
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(WeightsError, match="sha256"):
        segment_image(phantom_ct(), str(folder), device="cpu")


class Payload:
    def __reduce__(self):
        return (Path.touch, (Path(MARKER),))


MARKER = ""


def test_pickle_payload_checkpoint_is_refused_without_running_it(tmp_path):
    global MARKER
    MARKER = str(tmp_path / "pwned")
    checkpoint = tmp_path / "evil.pt"
    torch.save({"conv.weight": torch.zeros(1), "extra": Payload()}, checkpoint)
    with pytest.raises(WeightsError, match="pickle payload"):
        load_state_dict(checkpoint, "state_dict")
    assert not Path(MARKER).exists(), "the payload ran"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script makes the test file
def test_torchscript_weights_are_refused(tmp_path):
    scripted = torch.jit.script(torch.nn.Conv3d(1, 1, 1))
    scripted.save(str(tmp_path / "model.ts"))
    with pytest.raises(WeightsError, match="TorchScript"):
        load_state_dict(tmp_path / "model.ts", "state_dict")
    with pytest.raises(WeightsError, match="TorchScript"):
        load_state_dict(tmp_path / "model.ts", "torchscript")


def _spec_with_url(tmp_path, url, sha256, **weights):
    data = threshold_spec_dict("downloaded")
    data["weights"] = {"format": "safetensors", "path": "model.safetensors", "url": url, "sha256": sha256, **weights}
    return spec_from_dict(data, folder=tmp_path / "models" / "downloaded")


def test_download_over_http_verifies_then_installs(tmp_path, http_folder):
    served, base = http_folder
    source = write_model_folder(tmp_path / "src", threshold_spec_dict(), threshold_state())
    blob = (source / "model.safetensors").read_bytes()
    (served / "w.safetensors").write_bytes(blob)
    sha = hashlib.sha256(blob).hexdigest()
    spec = _spec_with_url(tmp_path, f"{base}/w.safetensors", sha)
    installed = download_weights(spec)
    assert installed.read_bytes() == blob
    assert json.loads((installed.parent / "weights.verified.json").read_text())["sha256"] == sha
    labelmap, _ = segment_image(phantom_ct(), spec, device="cpu")
    assert labelmap.array.sum() == sphere_label(phantom_ct()).sum()
    # A mismatch leaves nothing behind: no weights, no temp files.
    bad = _spec_with_url(tmp_path / "b", f"{base}/w.safetensors", "0" * 64)
    with pytest.raises(WeightsError, match="sha256"):
        download_weights(bad)
    assert list(bad.folder.iterdir()) == []


def test_download_of_an_archive_checks_the_member_md5_and_records_sha256(tmp_path, http_folder):
    served, base = http_folder
    source = write_model_folder(tmp_path / "src", threshold_spec_dict(), threshold_state())
    blob = (source / "model.safetensors").read_bytes()
    with zipfile.ZipFile(served / "bundle.zip", "w") as archive:
        archive.writestr("bundle/configs/inference.json", "{}")
        archive.writestr("bundle/models/model.safetensors", blob)
    md5 = hashlib.md5(blob).hexdigest()
    spec = _spec_with_url(
        tmp_path, f"{base}/bundle.zip", None, md5=md5, archive="zip", member="models/model.safetensors"
    )
    installed = download_weights(spec)
    record = json.loads((installed.parent / "weights.verified.json").read_text())
    assert record["sha256"] == hashlib.sha256(blob).hexdigest() and record["md5"] == md5
    entries = [e for e in ModelRegistry(tmp_path / "models").entries() if e.spec.id == "spleen_ct_segmentation"]
    assert entries and not entries[0].weights_present
    wrong = _spec_with_url(
        tmp_path / "w", f"{base}/bundle.zip", None, md5="0" * 32, archive="zip", member="models/model.safetensors"
    )
    with pytest.raises(WeightsError, match="md5"):
        download_weights(wrong)
    assert not (wrong.folder / "model.safetensors").exists()


def _zip_with(name: str, symlink: bool = False) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = 0o120777 << 16
        archive.writestr(info, "/etc/passwd" if symlink else "x")
    return buffer.getvalue()


def _tar_with(name: str, kind: bytes = tarfile.REGTYPE) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo(name)
        info.type = kind
        if kind == tarfile.SYMTYPE:
            info.linkname = "/etc/passwd"
            archive.addfile(info)
        else:
            info.size = 1
            archive.addfile(info, io.BytesIO(b"x"))
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name, payload",
    [
        ("abs.zip", _zip_with("/tmp/evil")),
        ("dotdot.zip", _zip_with("models/../../evil")),
        ("link.zip", _zip_with("models/model.pt", symlink=True)),
        ("abs.tar.gz", _tar_with("/tmp/evil")),
        ("dotdot.tar.gz", _tar_with("../evil")),
        ("link.tar.gz", _tar_with("models/model.pt", tarfile.SYMTYPE)),
    ],
)
def test_malicious_archives_are_refused(tmp_path, name, payload):
    archive = tmp_path / name
    archive.write_bytes(payload)
    with pytest.raises(UnsafeArchiveError, match="refused"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil").exists()
    assert not any((tmp_path / "out").rglob("*")) if (tmp_path / "out").exists() else True


def make_bundle(folder: Path, network_def: dict | None = None) -> Path:
    """A bundle folder in the spleen bundle's config shape, with the threshold network's weights."""
    params = threshold_spec_dict()["network"]["parameters"]
    config = {
        "imports": ["$import glob"],
        "bundle_root": ".",
        "network_def": network_def or {"_target_": "SegResNet", **params},
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "image",
                    "a_min": -1000,
                    "a_max": 1000,
                    "b_min": 0.0,
                    "b_max": 1.0,
                    "clip": True,
                },
                {"_target_": "EnsureTyped", "keys": "image"},
            ],
        },
        "roi": [32, 32, 32],
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": "@roi", "sw_batch_size": 2, "overlap": 0.25},
    }
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    meta = {
        "version": "0.1.0",
        "network_data_format": {"outputs": {"pred": {"channel_def": {"0": "bg", "1": "dense"}}}},
    }
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta))
    torch.save(threshold_state(), folder / "models" / "model.pt")
    return folder


def test_local_monai_bundle_folder_runs(tmp_path):
    bundle = make_bundle(tmp_path / "my_bundle")
    spec = spec_from_bundle(bundle)
    assert spec.preprocessing.spacing == (1.5, 1.5, 2.0) and spec.inference.roi_size == (32, 32, 32)
    assert spec.labels[0].name == "dense" and spec.version == "0.1.0"
    ct = phantom_ct()
    labelmap, _ = segment_image(ct, str(bundle), device="cpu")
    np.testing.assert_array_equal(labelmap.array, sphere_label(ct))


def test_bundle_targets_outside_monai_nets_are_refused(tmp_path):
    evil = make_bundle(tmp_path / "evil", {"_target_": "os.system", "command": "touch pwned"})
    with pytest.raises(ValueError, match="only monai.networks.nets"):
        spec_from_bundle(evil)
    params = copy.deepcopy(threshold_spec_dict()["network"]["parameters"])
    params["init_filters"] = "$__import__('os').system('touch pwned')"
    expr = make_bundle(tmp_path / "expr", {"_target_": "monai.networks.nets.SegResNet", **params})
    with pytest.raises(ValueError, match="does not run code"):
        spec_from_bundle(expr)
    assert not Path("pwned").exists()


def test_bundle_with_transforms_we_do_not_reproduce_is_refused(tmp_path):
    bundle = make_bundle(tmp_path / "cropping")
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["preprocessing"]["transforms"].append(
        {"_target_": "CropForegroundd", "keys": "image", "source_key": "image"}
    )
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="CropForegroundd"):
        spec_from_bundle(bundle)


def test_loaded_network_has_the_spec_weights(tmp_path):
    folder = write_model_folder(tmp_path / "m", threshold_spec_dict(), threshold_state())
    from lesionseg.models import load_spec

    network = load_network(load_spec(folder / "spec.json"))
    assert not network.training
    torch.testing.assert_close(
        network.state_dict()["conv_final.2.conv.weight"], threshold_state()["conv_final.2.conv.weight"]
    )


def test_models_download_command_installs_verified_weights(tmp_path, http_folder):
    served, base = http_folder
    source = write_model_folder(tmp_path / "src", threshold_spec_dict(), threshold_state())
    blob = (source / "model.safetensors").read_bytes()
    (served / "w.safetensors").write_bytes(blob)
    spec = threshold_spec_dict("remote")
    spec["weights"].update(url=f"{base}/w.safetensors", sha256=hashlib.sha256(blob).hexdigest())
    models = tmp_path / "models"
    (models / "remote").mkdir(parents=True)
    (models / "remote" / "spec.json").write_text(json.dumps(spec))
    (models / "broken").mkdir()
    (models / "broken" / "spec.json").write_text("{not json")
    command = [sys.executable, "-m", "lesionseg", "models", "--models-dir", str(models)]
    assert not ModelRegistry(models).get("remote").weights_path.exists()
    run = subprocess.run([*command, "download", "remote"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (models / "remote" / "model.safetensors").read_bytes() == blob
    after = subprocess.run([*command, "list"], capture_output=True, text=True)
    remote = next(line for line in after.stdout.splitlines() if line.startswith("remote"))
    assert "present, verified" in remote
    assert any(line.startswith("broken") and "unreadable" in line for line in after.stdout.splitlines())


def test_unreachable_download_is_a_clear_error_and_leaves_nothing(tmp_path, http_folder):
    _served, base = http_folder
    spec = _spec_with_url(tmp_path, f"{base}/no-such-file.safetensors", "0" * 64)
    with pytest.raises(WeightsError, match="could not download"):
        download_weights(spec)
    assert list(spec.folder.iterdir()) == []
