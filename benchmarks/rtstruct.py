"""RTSTRUCT export speed and fidelity: LesionSeg against rt-utils 1.2.7, judged by plastimatch.

    .venv/bin/python benchmarks/rtstruct.py [--size 512] [--slices 150]

A 512 x 512 x 150 label map with three structures (a large organ, a ring with a hole, five small
spheres) is exported by both writers onto the same CT series.  Each export is timed (best of
``--repeat``; reading the series is included, interpreter start-up and imports are not), then
plastimatch rasterizes each RTSTRUCT back onto the CT and the masks are compared with the source
(Dice per structure).  dciodvfy's error count is printed too.

rt-utils runs in its own venv (``requirements/bench.txt``: it pulls opencv-python), in a child
process of this script; without that venv only our side is measured.  rt-utils is given its
keyhole option (``use_pin_hole=True``), its way of keeping a hole in one contour.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NAMES = {1: "Organ", 2: "Ring", 3: "Spheres"}


def rt_utils_worker(ct: str, labels_npy: str, output: str, repeat: int) -> None:
    """Runs inside the rt-utils venv: export with rt-utils and print the best time as JSON."""
    from rt_utils import RTStructBuilder

    labels = np.load(labels_npy)  # [slice, row, column] in ascending slice position, as rt-utils sorts
    masks = {name: np.transpose(labels == value, (1, 2, 0)) for value, name in NAMES.items()}
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        rtstruct = RTStructBuilder.create_new(dicom_series_path=ct)
        for name, mask in masks.items():
            rtstruct.add_roi(mask=mask, name=name, use_pin_hole=True)
        rtstruct.save(output)
        best = min(best, time.perf_counter() - start)
    print(json.dumps({"seconds": best}))


def phantom(shape: tuple[int, int, int], spacing: np.ndarray) -> np.ndarray:
    nk, nj, ni = shape
    z, y, x = np.ogrid[0:nk, 0:nj, 0:ni]
    x = (x - (ni - 1) / 2) * spacing[0]
    y = (y - (nj - 1) / 2) * spacing[1]
    z = (z - (nk - 1) / 2) * spacing[2]
    labels = np.zeros(shape, np.uint8)
    labels[((x + 60) / 90) ** 2 + ((y + 10) / 70) ** 2 + (z / 110) ** 2 <= 1] = 1
    radius = np.hypot(x - 90, y - 40)
    labels[(radius <= 45) & (radius >= 22) & (np.abs(z) <= 40)] = 2
    for cx, cy, cz, r in (
        (80, -90, -60, 4),
        (110, -60, 20, 6),
        (60, -110, 60, 8),
        (-150, 110, 0, 5),
        (20, 130, -90, 7),
    ):
        labels[(x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= r**2] = 3
    return labels


def plastimatch_dice(rtstruct: Path, ct: Path, work: Path, source) -> dict[str, float]:
    from lesionseg.io import read_image

    sys.path.insert(0, str(ROOT / "Testing"))  # the tests' judge puts plastimatch's masks on the phantom's grid
    from support.plastimatch import on_grid

    out = work / f"pm_{rtstruct.stem}"
    command = ["plastimatch", "convert", "--input", str(rtstruct), "--referenced-ct", str(ct)]
    subprocess.run([*command, "--output-prefix", str(out), "--prefix-format", "nrrd"], check=True, capture_output=True)
    scores = {}
    for value, name in NAMES.items():
        path = out / f"{name}.nrrd"
        if not path.exists():
            scores[name] = float("nan")
            continue
        a = on_grid(read_image(path), source) > 0
        b = source.array == value
        scores[name] = 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())
    return scores


def dciodvfy_errors(path: Path) -> int | str:
    if shutil.which("dciodvfy") is None:
        return "n/a"
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return sum("Error" in line for line in (done.stdout + done.stderr).splitlines())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=150)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--rt-utils-python", default=str(ROOT / ".venv-bench" / "bin" / "python"))
    parser.add_argument("--work", help="keep files here (default: a temporary folder)")
    parser.add_argument("--rt-utils-worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rt_utils_worker:
        rt_utils_worker(*args.rt_utils_worker, repeat=args.repeat)
        return 0

    from lesionseg.dicom import write_ct_series
    from lesionseg.image import Image
    from lesionseg.rtstruct import export_rtstruct

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_rtstruct_"))
    work.mkdir(parents=True, exist_ok=True)
    spacing = np.array([0.78125, 0.78125, 2.0])
    shape = (args.slices, args.size, args.size)
    grid = Image(np.zeros(shape, np.int16), spacing, (-199.6, -199.6, -150.0))
    source = grid.with_array(phantom(shape, spacing))
    ct = work / "ct"
    if not ct.exists():
        write_ct_series(grid, ct, uid_seed="bench-rtstruct")
    print(f"label map {shape[2]}x{shape[1]}x{shape[0]}, voxels per structure:", end=" ")
    print({name: int((source.array == value).sum()) for value, name in NAMES.items()})

    results: dict[str, dict] = {}
    best = float("inf")
    ours = work / "ours.dcm"
    for _ in range(args.repeat):
        start = time.perf_counter()
        export_rtstruct(ct, source, ours, names=NAMES, say=lambda _: None)
        best = min(best, time.perf_counter() - start)
    results["LesionSeg"] = {"seconds": best, "file": ours}

    theirs = work / "rt_utils.dcm"
    if Path(args.rt_utils_python).exists():
        np.save(work / "labels.npy", source.array)
        worker = [args.rt_utils_python, __file__, "--repeat", str(args.repeat), "--rt-utils-worker"]
        done = subprocess.run([*worker, str(ct), str(work / "labels.npy"), str(theirs)], capture_output=True, text=True)
        if done.returncode == 0:
            results["rt-utils 1.2.7"] = {"seconds": json.loads(done.stdout.strip().splitlines()[-1])["seconds"]}
            results["rt-utils 1.2.7"]["file"] = theirs
        else:
            print(f"rt-utils failed:\n{done.stderr[-2000:]}")
    else:
        print(
            f"rt-utils venv not found at {args.rt_utils_python}: measuring LesionSeg alone (see requirements/bench.txt)"
        )

    for entry in results.values():
        entry["dice"] = plastimatch_dice(entry["file"], ct, work, source)
        entry["dciodvfy_errors"] = dciodvfy_errors(entry["file"])
        entry["size_kb"] = entry["file"].stat().st_size / 1024
    print(f"{'writer':<16}{'time s':>9}{'file kB':>10}{'dciodvfy err':>14}  plastimatch Dice per structure")
    for name, entry in results.items():
        dice = "  ".join(f"{k} {v:.4f}" for k, v in entry["dice"].items())
        print(f"{name:<16}{entry['seconds']:>9.2f}{entry['size_kb']:>10.0f}{entry['dciodvfy_errors']!s:>14}  {dice}")
    if len(results) == 2:
        ratio = results["rt-utils 1.2.7"]["seconds"] / results["LesionSeg"]["seconds"]
        print(f"time ratio rt-utils / LesionSeg: {ratio:.2f}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
