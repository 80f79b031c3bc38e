"""``lesionseg segment`` against nnU-Net's own prediction, on the same nnU-Net model folder and file.

    python benchmarks/nnunet.py [--size small|default] [--shape Z Y X] [--reference auto|cli|api]

Both run as child processes from a cold start (imports, checkpoint loading, reading, preprocessing, sliding window,
resampling back, writing), with the same fold (0), no mirroring and tile step 0.5, on the CPU.  Peak memory is the
largest sum of the resident sets of the child and all its descendants (nnU-Net's preprocessing and export
workers are processes of their own), sampled every 20 ms from /proc.  Dice compares the two labelmaps per label.

``--size small``: the hand-set test model of Testing/support/nnunet_models.py (a three-stage UNet, 4 to 16
features).  ``--size default``: a 3d_fullres configuration of nnU-Net's default size for a CT (PlainConvUNet, six
stages of 32 to 320 features, two convolutions each, instance norm, patch 128³ at 1 mm); its weights are nnU-Net's
random initialisation, which times the same as trained ones.

The reference is ``nnUNetv2_predict`` (``--reference cli``) where it can start.  Here it cannot: its trainer lookup
imports timm and torchvision, which are not installed beside the CPU torch (requirements/nnunet.txt), so ``auto``
falls back to ``nnUNetPredictor.predict_from_files`` (``api``) with the network built from the plans, nnU-Net's
own file pipeline with the CLI's worker counts (3 preprocessing, 3 export).  The report says which ran.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Testing"))

API_CHILD = """
import json, sys, torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
folder, source, out_dir = sys.argv[1:4]
plans = json.load(open(folder + "/plans.json")); dataset = json.load(open(folder + "/dataset.json"))
checkpoint = torch.load(folder + "/fold_0/checkpoint_final.pth", map_location="cpu", weights_only=False)
manager = PlansManager(plans)
configuration = manager.get_configuration(checkpoint["init_args"]["configuration"])
network = get_network_from_plans(configuration.network_arch_class_name, configuration.network_arch_init_kwargs,
    configuration.network_arch_init_kwargs_req_import, determine_num_input_channels(manager, configuration, dataset),
    manager.get_label_manager(dataset).num_segmentation_heads, deep_supervision=False)
predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, perform_everything_on_device=False,
                            device=torch.device("cpu"), allow_tqdm=False)
predictor.manual_initialization(network, manager, configuration, [checkpoint["network_weights"]], dataset,
    checkpoint["trainer_name"], checkpoint["inference_allowed_mirroring_axes"])
predictor.predict_from_files([[source]], out_dir, num_processes_preprocessing=3, num_processes_segmentation_export=3)
"""


def _tree_rss_bytes(root: int) -> int:
    """Resident bytes of ``root`` and every descendant, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo, page = 0, [root], os.sysconf("SC_PAGE_SIZE")
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/statm", encoding="ascii") as f:
                total += int(f.read().split()[1]) * page
        except (OSError, ValueError, IndexError):
            pass
        todo.extend(children.get(pid, []))
    return total


def run_measured(command: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall seconds and peak process-tree RSS (GiB) of ``command``."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    peak = [0]

    def sample() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], _tree_rss_bytes(process.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    sampler.join()
    done = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    return seconds, peak[0] / 1024**3, done


def default_size_plans(nm) -> dict:
    """nm's plans with a 3d_fullres of nnU-Net's default size for a CT at 1 mm."""
    plans = nm.plans_dict()
    fullres = plans["configurations"]["3d_fullres"]
    arch = fullres["architecture"]["arch_kwargs"]
    arch.update(
        n_stages=6,
        features_per_stage=[32, 64, 128, 256, 320, 320],
        kernel_sizes=[[3, 3, 3]] * 6,
        strides=[[1, 1, 1]] + [[2, 2, 2]] * 5,
        n_conv_per_stage=[2] * 6,
        n_conv_per_stage_decoder=[2] * 5,
        norm_op="torch.nn.modules.instancenorm.InstanceNorm3d",
    )
    fullres.update(patch_size=[128, 128, 128], spacing=[1.0, 1.0, 1.0])
    plans["configurations"] = {"3d_fullres": copy.deepcopy(fullres)}
    return plans


def build_model(root: Path, size: str) -> Path:
    from support import nnunet_models as nm

    if size == "small":
        return nm.build_dataset(root, ("3d_fullres",), folds=(0,)).configuration("3d_fullres")
    import torch

    plans, dataset = default_size_plans(nm), nm.dataset_dict()
    folder = root / nm.DATASET / f"{nm.TRAINER}__{nm.PLANS}__3d_fullres"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=2), encoding="utf-8")
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2), encoding="utf-8")
    torch.manual_seed(0)
    network = nm._network(plans, "3d_fullres", 1)
    optimizer = torch.optim.SGD(network.parameters(), 0.01)
    nm.save_checkpoint(folder / "fold_0" / "checkpoint_final.pth", network, optimizer, plans, dataset, "3d_fullres",
                       0, -0.5)  # fmt: skip
    return folder


def dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    total = int(x.sum() + y.sum())
    return 1.0 if total == 0 else 2 * int((x & y).sum()) / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["small", "default"], default="small")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), help="image size (z, y, x)")
    parser.add_argument("--reference", choices=["auto", "cli", "api"], default="auto")
    args = parser.parse_args()
    import SimpleITK as sitk
    from support import nnunet_models as nm

    shape = tuple(args.shape or ((48, 96, 96) if args.size == "small" else (160, 192, 192)))
    spacing = nm.IMAGE_SPACING_XYZ if args.size == "small" else (1.0, 1.0, 1.0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = build_model(tmp / "results", args.size)
        image, _ = nm.phantom(shape_zyx=shape, spacing_xyz=spacing, seed=1)
        source = nm.write_case(tmp / "in" / "case_0000.nii.gz", image, spacing_xyz=spacing)
        ours_out = tmp / "ours.nii.gz"
        ours = run_measured([sys.executable, "-m", "lesionseg", "segment", "--model", str(folder), "--input",
                             str(source), "--output", str(ours_out), "--device", "cpu", "--folds", "0", "--no-tta",
                             "--tile-step-size", "0.5"])  # fmt: skip
        if ours[2].returncode:
            raise SystemExit(f"lesionseg segment failed:\n{ours[2].stderr[-3000:]}")
        reference, how = None, ""
        if args.reference in ("auto", "cli"):
            env_dirs = {"nnUNet_results": str(tmp / "results"), "nnUNet_raw": str(tmp), "nnUNet_preprocessed": str(tmp)}
            os.environ.update(env_dirs)
            cli = Path(sys.executable).parent / "nnUNetv2_predict"
            reference = run_measured([str(cli), "-i", str(source.parent), "-o", str(tmp / "cli"), "-d", "900",
                                      "-c", "3d_fullres", "-f", "0", "--disable_tta", "-step_size", "0.5",
                                      "-device", "cpu"])  # fmt: skip
            how = "nnUNetv2_predict"
            if reference[2].returncode:
                last = reference[2].stderr.strip().splitlines()[-1:] or ["?"]
                if args.reference == "cli":
                    raise SystemExit(f"nnUNetv2_predict failed: {last[0]}")
                print(f"nnUNetv2_predict cannot run here ({last[0]}); using nnUNetPredictor.predict_from_files")
                reference = None
            else:
                reference_out = tmp / "cli" / "case.nii.gz"
        if reference is None:
            reference = run_measured([sys.executable, "-c", API_CHILD, str(folder), str(source), str(tmp / "api")])
            how = "nnUNetPredictor.predict_from_files (3 + 3 workers)"
            if reference[2].returncode:
                raise SystemExit(f"the nnU-Net child failed:\n{reference[2].stderr[-3000:]}")
            reference_out = tmp / "api" / "case.nii.gz"
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(ours_out)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(reference_out)))
        dices = {label: round(dice(a, b, label), 5) for label in (1, 2)}
        share = {label: round(float((b == label).mean()), 4) for label in (1, 2)}
    load = os.getloadavg()
    print(f"model {args.size}, image {list(shape)} (z, y, x) at {list(spacing)} mm (x, y, z), fold 0, no TTA, step 0.5")
    print(f"{'run':<52} {'time (s)':>9} {'peak RSS (GiB)':>15}")
    print(f"{'lesionseg segment':<52} {ours[0]:9.2f} {ours[1]:15.2f}")
    print(f"{how:<52} {reference[0]:9.2f} {reference[1]:15.2f}")
    print(f"ratio nnU-Net / ours: time {reference[0] / ours[0]:.2f}, peak memory {reference[1] / ours[1]:.2f}")
    print(f"Dice per label (ours vs nnU-Net): {dices}; label share of the nnU-Net output: {share}")
    print(f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
