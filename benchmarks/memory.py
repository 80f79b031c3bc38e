"""Peak memory of ``lesionseg segment`` against MONAI's canonical spleen pipeline, on the same large CT.

    python benchmarks/memory.py [--size 512 512 900] [--spacing 0.78 0.78 1.0]

Each pipeline runs in a child process of its own, which reports its peak resident set (``ru_maxrss``); the ratio
is printed.  The network has the spleen spec's grid and window but is a narrow UNet (2 to 32 channels, random
weights), so the figure is the pipeline's own memory (reading, resampling, stitching, inversion, writing), which is
what grows with the CT; a wider network adds the same activations per window to both.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Testing"))

MONAI_CHILD = """
import json, sys, time
import nibabel as nib, numpy as np, torch
sys.path.insert(0, {testing!r})
from engine.test_inference import monai_canonical
from lesionseg.models import load_spec
torch.set_num_threads({threads})
started = time.perf_counter()
labels = monai_canonical({source!r}, load_spec({spec!r}), torch.load({weights!r}, weights_only=True))
nib.save(nib.Nifti1Image(labels.astype(np.uint8), nib.load({source!r}).affine), {output!r})
print(json.dumps({{"seconds": time.perf_counter() - started, "foreground": int((labels > 0).sum())}}))
"""


# Each child reports its own peak resident set on exit (Linux gives ru_maxrss in KiB).
REPORT_PEAK = (
    "import atexit, resource, sys; "
    "atexit.register(lambda: print('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr))\n"
)


def peak_of_child(code: str) -> tuple[float, str]:
    """Run ``code`` in a fresh Python; its peak RSS in GiB and its stdout."""
    run = subprocess.run([sys.executable, "-c", REPORT_PEAK + code], capture_output=True, text=True, cwd=REPO)
    if run.returncode:
        raise SystemExit(f"the child failed:\n{run.stderr[-3000:]}")
    peak = [line.split()[1] for line in run.stderr.splitlines() if line.startswith("PEAK_KIB ")][-1]
    return int(peak) / 1024**2, run.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, nargs=3, default=[512, 512, 900], help="i j k voxels")
    parser.add_argument("--spacing", type=float, nargs=3, default=[0.78, 0.78, 1.0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=["ours", "monai"], help="measure one pipeline")
    args = parser.parse_args()

    import numpy as np
    from support.tiny_models import write_model_folder

    from lesionseg.image import Image
    from lesionseg.io import write_image

    work = Path(tempfile.mkdtemp(prefix="lesionseg-memory-"))
    spec = json.loads((REPO / "lesionseg/resources/models/spleen_ct_segmentation.json").read_text())
    spec["id"], spec["weights"] = "memory_bench", {"format": "state_dict", "path": "model.pt", "sha256": None}
    spec["network"]["parameters"].update(channels=[2, 4, 8, 16, 32], num_res_units=1)  # cheap windows
    from monai.networks.nets import UNet

    model = write_model_folder(work / "model", spec, UNet(**spec["network"]["parameters"]).state_dict())
    size_kji = tuple(reversed(args.size))
    ct = np.full(size_kji, -1000, dtype=np.int16)  # CT as scanners store it: int16 HU
    j, i = np.ogrid[: size_kji[1], : size_kji[2]]
    body = ((j - size_kji[1] / 2) / (0.35 * size_kji[1])) ** 2 + ((i - size_kji[2] / 2) / (0.45 * size_kji[2])) ** 2
    ct[:, body < 1] = 40
    ct[:, size_kji[1] // 3 : size_kji[1] // 2, size_kji[2] // 3 : size_kji[2] // 2] = 300
    source = write_image(Image(ct, tuple(args.spacing), (0.0, 0.0, 0.0), np.eye(3)), work / "ct.nii.gz")
    del ct
    print(f"CT {args.size} at {args.spacing} mm written to {source}", flush=True)

    figures: dict = {"size": args.size, "spacing": args.spacing, "threads": args.threads, "date": time.strftime("%F")}
    if args.only in (None, "ours"):
        started = time.perf_counter()
        argv = ["segment", "--model", str(model), "--input", str(source), "--output", str(work / "ours.nii.gz"),
                "--device", "cpu", "--progress", "jsonl"]  # fmt: skip
        code = (
            f"import torch; torch.set_num_threads({args.threads}); "
            f"from lesionseg.cli import main; sys.exit(main({argv!r}))"
        )
        peak, stdout = peak_of_child(code)
        figures["ours_peak_gib"] = round(peak, 2)
        figures["ours_s"] = round(time.perf_counter() - started, 1)
    if args.only in (None, "monai"):
        code = MONAI_CHILD.format(
            testing=str(REPO / "Testing"), threads=args.threads, source=str(source), spec=str(model / "spec.json"),
            weights=str(model / "model.pt"), output=str(work / "monai.nii.gz"),
        )  # fmt: skip
        peak, stdout = peak_of_child(code)
        figures["monai_peak_gib"] = round(peak, 2)
        figures["monai_s"] = round(json.loads(stdout.strip().splitlines()[-1])["seconds"], 1)
    if "ours_peak_gib" in figures and "monai_peak_gib" in figures:
        figures["monai_over_ours"] = round(figures["monai_peak_gib"] / figures["ours_peak_gib"], 2)
    figures["machine"] = platform.processor() or platform.machine()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
