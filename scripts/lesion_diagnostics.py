"""Why the demo lesion model does not learn: contrast, sampling, learning, and detection on unseen phantoms.

    .venv/bin/python scripts/lesion_diagnostics.py contrast --work /tmp/diag [--cases 8 --seed 2026]
    .venv/bin/python scripts/lesion_diagnostics.py sampling --work /tmp/diag [--draws 40]
    .venv/bin/python scripts/lesion_diagnostics.py learning --work /tmp/diag [--seconds 170] [--recipe r.yaml]
    .venv/bin/python scripts/lesion_diagnostics.py detect --work /tmp/diag [--cases 6 --seed 9101] [--model DIR]

Each prints a Markdown table and writes JSON into --work.  Phantoms come from ``lesionseg.data`` with the
options ``scripts/train_demo_models.py`` uses (size small, at most 8 lesions); seed 2026 is the demo
training cohort, other seeds are unseen.  Measurement only: nothing here changes a model or a phantom.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lesionseg.data import LABEL, SynthOptions, generate_cohort  # noqa: E402
from lesionseg.data.lesions import truth_lesion_at  # noqa: E402
from lesionseg.image import Image  # noqa: E402
from lesionseg.io import read_image, write_image  # noqa: E402
from lesionseg.resample import resample_to_spacing  # noqa: E402

LESION_VALUES = (LABEL["bone_metastasis"], LABEL["nodal_metastasis"])
WINDOWS = {"demo (-200..1200)": (-200.0, 1200.0), "lesion preset (-200..300)": (-200.0, 300.0)}


def cohort(work: Path, cases: int, seed: int) -> list[Path]:
    folder = work / f"phantoms-{seed}-{cases}"
    if not (folder / "cohort.json").is_file():
        generate_cohort(folder, cases, seed, SynthOptions(size="small", max_lesions=8), overwrite=True)
    return sorted(p for p in folder.iterdir() if (p / "image.nii.gz").is_file())


def _lesion_rows(image: Image, label: Image, truth: list[dict], grid: str) -> list[dict[str, Any]]:
    """Mean HU inside each lesion component, in a one-voxel shell around it, and in the bone part of that shell."""
    hu = image.array.astype(np.float64)
    lab = label.array
    lesion = np.isin(lab, LESION_VALUES)
    components, count = ndimage.label(lesion, structure=np.ones((3, 3, 3)))
    rows = []
    for number, box in enumerate(ndimage.find_objects(components), start=1):
        grown = tuple(slice(max(0, s.start - 2), s.stop + 2) for s in box)
        inside = components[grown] == number
        shell = ndimage.binary_dilation(inside, structure=np.ones((3, 3, 3))) & ~lesion[grown]
        bone_shell = shell & (lab[grown] == LABEL["bone"])
        kji = np.argwhere(inside).mean(axis=0) + [s.start for s in grown]
        match = truth_lesion_at(truth, image.world(kji[::-1]))
        row: dict[str, Any] = {
            "grid": grid,
            "kind": match["kind"] if match else "unmatched",
            "diameter_mm": match["diameter_mm"] if match else None,
            "voxels": int(inside.sum()),
            "truth_hu": match["hu"] if match else None,
        }
        for window, (low, high) in {"HU": (-np.inf, np.inf), **WINDOWS}.items():
            values = np.clip(hu[grown], low, high)
            scale = 1.0 if window == "HU" else 1.0 / (high - low)
            row[window] = {
                "inside": float(values[inside].mean()),
                "shell": float(values[shell].mean()) if shell.any() else None,
                "bone_shell": float(values[bone_shell].mean()) if bone_shell.any() else None,
                "contrast": (float(values[inside].mean() - values[shell].mean()) * scale) if shell.any() else None,
                "bone_contrast": (float(values[inside].mean() - values[bone_shell].mean()) * scale)
                if bone_shell.any()
                else None,
            }
        rows.append(row)
    return rows


def run_contrast(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    lost: dict[str, list[int]] = {}
    for case in cohort(args.work, args.cases, args.seed):
        truth = json.loads((case / "truth.json").read_text())
        image, label = read_image(case / "image.nii.gz"), read_image(case / "label.nii.gz")
        grids = {"native": (image, label)}
        for mm in (4.0, 2.0):
            grids[f"{mm:g} mm"] = (
                resample_to_spacing(image, (mm, mm, mm), "linear"),
                resample_to_spacing(label, (mm, mm, mm), "nearest"),
            )
        for grid, (img, lab) in grids.items():
            found = _lesion_rows(img, lab, truth["lesions"], grid)
            for row in found:
                row["noise_sd_hu"] = truth["noise_sd_hu"]
                row["case"] = case.name
                row["spacing_mm"] = [round(float(s), 2) for s in truth["spacing_mm"]]
            rows += found
            seen = {r["diameter_mm"] for r in found}
            for t in truth["lesions"]:
                entry = lost.setdefault(grid, [0, 0])
                entry[1] += 1
                entry[0] += t["diameter_mm"] not in seen
    summary: dict[str, Any] = {"lost_lesions": lost, "by_kind": {}}
    for grid in ("native", "4 mm", "2 mm"):
        for kind in ("sclerotic", "lytic", "node"):
            picked = [r for r in rows if r["grid"] == grid and r["kind"] == kind]
            if not picked:
                continue

            def mean(key: str, window: str = "HU", rows=picked) -> float | None:
                values = [r[window][key] for r in rows if r[window][key] is not None]
                return float(np.mean(values)) if values else None

            summary["by_kind"][f"{grid} {kind}"] = {
                "n": len(picked),
                "voxels_median": float(np.median([r["voxels"] for r in picked])),
                "truth_hu": float(np.mean([r["truth_hu"] for r in picked])),
                "inside_hu": mean("inside"),
                "shell_hu": mean("shell"),
                "bone_shell_hu": mean("bone_shell"),
                "contrast_hu": mean("contrast"),
                "bone_contrast_hu": mean("bone_contrast"),
                "cnr": float(np.mean([abs(r["HU"]["contrast"] or 0) / r["noise_sd_hu"] for r in picked])),
                **{f"contrast {w}": mean("contrast", w) for w in WINDOWS},
                **{f"bone_contrast {w}": mean("bone_contrast", w) for w in WINDOWS},
            }
    print("| grid, kind | n | voxels (median) | drawn HU | inside HU | shell HU | bone shell HU | contrast | CNR |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key, s in summary["by_kind"].items():
        cells = [s["truth_hu"], s["inside_hu"], s["shell_hu"], s["bone_shell_hu"], s["contrast_hu"], s["cnr"]]
        text = " | ".join("—" if v is None else f"{v:.0f}" if abs(v) >= 10 else f"{v:.2f}" for v in cells)
        print(f"| {key} | {s['n']} | {s['voxels_median']:.0f} | {text} |")
    print("lesions with no label voxel on the grid:", {g: f"{a}/{b}" for g, (a, b) in lost.items()})
    return {"rows": rows, "summary": summary}


def demo_config(preset: str, recipe: Path | None = None) -> dict[str, Any]:
    """The ``lesion`` preset, or the demo-lesion config with ``recipe`` (a YAML/JSON config) laid over it."""
    from lesionseg.training.config import load_config, read_config_source

    if preset == "lesion":
        return load_config("lesion")
    sys.path.insert(0, str(ROOT / "scripts"))
    import train_demo_models as demo

    demo_lesion = demo._merge(demo.COMMON, demo.TASKS["demo-lesion"]["config"])
    return load_config(demo._merge(demo_lesion, read_config_source(recipe)) if recipe else demo_lesion)


def _lesion_labels(cases: list[Path], work: Path) -> list[dict[str, str]]:
    """Training items whose label is the lesions only (bone 1, node 2), as the demo dataset maps them."""
    items = []
    for case in cases:
        target = work / "lesion-labels" / f"{case.parent.name}-{case.name}.nii.gz"
        if not target.is_file():
            label = read_image(case / "label.nii.gz")
            lookup = np.zeros(256, np.uint8)
            lookup[LABEL["bone_metastasis"]], lookup[LABEL["nodal_metastasis"]] = 1, 2
            target.parent.mkdir(parents=True, exist_ok=True)
            write_image(label.with_array(lookup[label.array]), target)
        items.append({"image": str(case / "image.nii.gz"), "label": str(target)})
    return items


def run_sampling(args: argparse.Namespace) -> dict[str, Any]:
    from monai.transforms import Compose
    from monai.utils import set_determinism

    from lesionseg.training.data import deterministic_transforms, random_transforms

    set_determinism(seed=7)
    out: dict[str, Any] = {}
    demo = demo_config("demo")
    for preset in ("demo", "lesion"):
        config = demo_config(preset)
        items = _lesion_labels(cohort(args.work, args.cases, args.seed), args.work)
        # Whether a patch holds a lesion is the crop's doing; the rotations and zooms after it only cost time.
        # The lesion preset's crops (96 mm at 1 mm) are drawn as the same 96 mm cubes on the demo's 4 mm grid:
        # the same physical crops, without resampling every phantom to 1 mm (minutes and gigabytes each here).
        crop = {**config, "augmentation": dict(config["augmentation"])}
        crop["augmentation"]["patch_size"] = [
            int(round(n * s / t))
            for n, s, t in zip(
                config["augmentation"]["patch_size"],
                config["preprocessing"]["spacing"],
                demo["preprocessing"]["spacing"],
                strict=True,
            )
        ]
        fixed, random_chain = Compose(deterministic_transforms(demo)), random_transforms(crop)[0]
        patches = with_lesion = with_bone = with_node = lesion_voxels = total_voxels = 0
        volumes_with_lesion = 0
        for item in items:
            data = fixed(item)
            volumes_with_lesion += bool((data["label"] > 0).any())
            for _ in range(args.draws):
                for patch in random_chain(data):
                    label = np.asarray(patch["label"])
                    patches += 1
                    with_lesion += bool((label > 0).any())
                    with_bone += bool((label == 1).any())
                    with_node += bool((label == 2).any())
                    lesion_voxels += int((label > 0).sum())
                    total_voxels += label.size
        aug = config["augmentation"]
        out[preset] = {
            "spacing_mm": config["preprocessing"]["spacing"],
            "patch_size": aug["patch_size"],
            "drawn_as": crop["augmentation"]["patch_size"],
            "positive": aug["positive"],
            "negative": aug["negative"],
            "volumes": len(items),
            "volumes_with_lesion": volumes_with_lesion,
            "patches": patches,
            "share_with_lesion": with_lesion / patches,
            "share_with_bone_lesion": with_bone / patches,
            "share_with_node": with_node / patches,
            "lesion_voxel_share": lesion_voxels / total_voxels,
        }
        print(f"{preset}: {json.dumps(out[preset])}")
    return out


def run_learning(args: argparse.Namespace) -> dict[str, Any]:
    """The demo recipe (or it with ``--recipe`` over it): network, loss, optimiser and schedule, sampling, windows
    and lesion-free cases as configured, with the loss on lesion voxels logged every step."""
    import torch
    from monai.transforms import Compose
    from monai.utils import set_determinism

    from lesionseg.training.data import deterministic_transforms, random_transforms
    from lesionseg.training.loop import _loss, _optimizer, _scheduler
    from lesionseg.training.networks import config_network

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    set_determinism(seed=7)
    config = demo_config("demo", args.recipe)
    items = _lesion_labels(cohort(args.work, args.cases, args.seed), args.work)
    # Crops see the lesion kinds (bone 1, node 2), so label_classes sampling can balance them; the loss sees one.
    crop = Compose(random_transforms(config, num_classes=3))
    fixed = Compose(deterministic_transforms(config))
    cached = [fixed(item) for item in items]
    if config["training"]["exclude_lesion_free"]:
        cached = [data for data in cached if data["label"].any()]

    def random_chain(data: dict) -> list[dict]:
        return [{**p, "label": (torch.as_tensor(p["label"]) > 0).to(torch.uint8)} for p in crop(data)]

    _, _, model = config_network(config, 2, max(1, len(config["preprocessing"]["windows"])))
    loss_fn = _loss(config)
    optimizer = _optimizer(config, model.parameters())
    scheduler = _scheduler(config, optimizer, config["training"]["epochs"])
    rng = np.random.default_rng(7)
    # A fixed probe of lesion-centred patches, scored every few steps, so the trend is not the noise of new crops.
    probe_items = [p for data in cached if data["label"].any() for p in random_chain(data) if p["label"].any()][:4]
    probe_image = torch.stack([torch.as_tensor(p["image"]) for p in probe_items]).float()
    probe_label = torch.stack([torch.as_tensor(p["label"]) for p in probe_items]).long()[:, 0] > 0
    probes = []
    log = []
    started, wall = time.process_time(), time.perf_counter()
    step = 0
    # CPU seconds, not wall: the machine is shared, and the question is how far this much training gets.
    while time.process_time() - started < args.seconds:
        if step % 5 == 0:
            model.eval()
            with torch.no_grad():
                log_p = torch.log_softmax(model(probe_image), dim=1)
            model.train()
            probes.append(
                {
                    "step": step,
                    "ce_lesion": float(-log_p[:, 1][probe_label].mean()),
                    "p_lesion_on_lesion": float(log_p[:, 1][probe_label].exp().mean()),
                    "lesion_voxel_recall": float((log_p[:, 1] > log_p[:, 0])[probe_label].float().mean()),
                    "false_voxels_per_patch": float(((log_p[:, 1] > log_p[:, 0]) & ~probe_label).sum()) / 4,
                }
            )
        patches = random_chain(cached[int(rng.integers(len(cached)))])
        image = torch.stack([torch.as_tensor(p["image"]) for p in patches]).float()
        label = torch.stack([torch.as_tensor(p["label"]) for p in patches]).long()
        output = model(image)
        loss = loss_fn(output, label)
        logits = output[:, 0] if output.dim() == label.dim() + 1 else output  # deep supervision: the main head
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None and (step + 1) % len(cached) == 0:
            scheduler.step()  # an "epoch" here is one draw per training volume
        with torch.no_grad():
            log_p = torch.log_softmax(logits, dim=1)
            lesion = label[:, 0] > 0
            entry = {"step": step, "cpu_seconds": time.process_time() - started, "loss": float(loss)}
            entry["lesion_voxels"] = int(lesion.sum())
            entry["ce_lesion"] = float(-log_p[:, 1][lesion].mean()) if lesion.any() else None
            entry["ce_background"] = float(-log_p[:, 0][~lesion].mean())
            entry["p_lesion_on_lesion"] = float(log_p[:, 1][lesion].exp().mean()) if lesion.any() else None
            entry["lesion_voxels_called"] = int(((log_p[:, 1] > log_p[:, 0]) & lesion).sum())
            entry["background_voxels_called"] = int(((log_p[:, 1] > log_p[:, 0]) & ~lesion).sum())
        log.append(entry)
        step += 1

    def window(part: list[dict]) -> dict[str, Any]:
        def avg(key: str) -> float | None:
            values = [e[key] for e in part if e[key] is not None]
            return float(np.mean(values)) if values else None

        called = sum(e["lesion_voxels_called"] for e in part)
        voxels = sum(e["lesion_voxels"] for e in part)
        return {
            "steps": f"{part[0]['step']}-{part[-1]['step']}",
            "loss": avg("loss"),
            "ce_lesion": avg("ce_lesion"),
            "ce_background": avg("ce_background"),
            "p_lesion_on_lesion": avg("p_lesion_on_lesion"),
            "lesion_voxel_recall": called / voxels if voxels else None,
            "false_voxels_per_patch": sum(e["background_voxels_called"] for e in part) / (4 * len(part)),
        }

    tenth = max(1, len(log) // 5)
    windows = [window(log[i : i + tenth]) for i in range(0, len(log) - tenth + 1, tenth)]
    for w in windows:
        print(json.dumps(w))
    print(f"probe ({int(probe_label.sum())} lesion voxels in 4 fixed patches):")
    for probe in probes:
        print(json.dumps(probe))
    minutes = (time.perf_counter() - wall) / 60
    print(f"{len(log)} steps ({len(log) / len(cached):.1f} draws per volume), {minutes:.1f} wall minutes")
    return {
        "recipe": str(args.recipe) if args.recipe else "demo-lesion",
        "config": config,
        "steps": len(log),
        "cpu_seconds": args.seconds,
        "wall_minutes": minutes,
        "windows": windows,
        "probes": probes,
        "log": log,
    }


def run_detect(args: argparse.Namespace) -> dict[str, Any]:
    """The shipped demo-lesion model on unseen phantoms, at several thresholds, through ``lesionseg evaluate``."""
    import torch

    from lesionseg.inference.pipeline import load_model, segment_image
    from lesionseg.metrics.case import case_detection

    torch.set_num_threads(args.threads)
    cases = cohort(args.work, args.cases, args.seed)
    model_dir = args.model or ROOT / "lesionseg" / "resources" / "models" / "demo-lesion"
    model = load_model(model_dir, "cpu")
    folder = args.work / f"detect-{args.seed}" if args.model is None else args.model / f"detect-{args.seed}"
    if folder.exists():
        shutil.rmtree(folder)  # an earlier run's files (more cases, other thresholds) must not be scored again
    thresholds = [float(t) for t in args.thresholds.split(",")]
    per_kind: dict[str, dict[str, list[int]]] = {}
    for case in cases:
        image, label = read_image(case / "image.nii.gz"), read_image(case / "label.nii.gz")
        ref = label.with_array(np.isin(label.array, LESION_VALUES).astype(np.uint8))
        write_image(ref, folder / "ref" / f"{case.name}.nii.gz")
        truth = json.loads((case / "truth.json").read_text())["lesions"]
        for threshold in [None, *thresholds]:
            name = "model" if threshold is None else f"t{threshold:g}"
            pred, _ = segment_image(image, model, "cpu", threshold=threshold)
            write_image(pred, folder / name / f"{case.name}.nii.gz")
            if threshold is not None:
                continue
            found = case_detection(pred, ref)
            for row in found["reference_lesions"]:
                match = truth_lesion_at(truth, ref.world(np.asarray(row["centre_kji"])[::-1]))
                kind = match["kind"] if match else "unmatched"
                big = match is not None and match["diameter_mm"] >= 10.0
                counts = per_kind.setdefault(kind, {"all": [0, 0], ">=10 mm nominal": [0, 0]})
                counts["all"][0] += row["hit"]
                counts["all"][1] += 1
                if big:
                    counts[">=10 mm nominal"][0] += row["hit"]
                    counts[">=10 mm nominal"][1] += 1
    output = folder / "metrics.json"
    command = [sys.executable, "-m", "lesionseg", "evaluate", "--pred", str(folder / "model"), "--ref"]
    command += [str(folder / "ref"), "-o", str(output), "--overwrite", "--min-reference-mm", "10"]
    command += ["--min-prediction-mm3", str(args.min_prediction_mm3)]
    for threshold in thresholds:
        command += ["--froc", f"{threshold:g}={folder / f't{threshold:g}'}"]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    print(done.stdout)
    result = json.loads(output.read_text())
    print("hits by kind (found/total):", json.dumps(per_kind))
    return {"evaluate_stdout": done.stdout, "summary": result["summary"], "froc": result["froc"], "by_kind": per_kind}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("contrast", "sampling", "learning", "detect"))
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for phantoms and results")
    parser.add_argument("--cases", type=int, help="phantoms (default 8; detect: 6)")
    parser.add_argument("--seed", type=int, help="phantom seed (default 2026, the demo's; detect: 9101)")
    parser.add_argument("--draws", type=int, default=40, help="sampling: crops drawn per volume (x samples)")
    parser.add_argument("--seconds", type=float, default=180.0, help="learning: CPU seconds to train")
    parser.add_argument("--thresholds", default="0.1,0.3,0.5,0.7", help="detect: FROC thresholds")
    parser.add_argument("--min-prediction-mm3", type=float, default=0.0, help="detect: smallest counted FP")
    parser.add_argument("--recipe", type=Path, help="learning: a YAML/JSON config laid over the demo-lesion one")
    parser.add_argument("--model", type=Path, help="detect: a trained model folder (default: the shipped demo-lesion)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    detect = args.part == "detect"
    args.cases = args.cases or (6 if detect else 8)
    args.seed = args.seed if args.seed is not None else (9101 if detect else 2026)
    args.work.mkdir(parents=True, exist_ok=True)
    result = {"contrast": run_contrast, "sampling": run_sampling, "learning": run_learning, "detect": run_detect}[
        args.part
    ](args)
    tag = f"-{args.recipe.stem}" if args.recipe and args.part == "learning" else ""
    target = (args.model or args.work) / f"{args.part}-{args.seed}{tag}.json"
    target.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
