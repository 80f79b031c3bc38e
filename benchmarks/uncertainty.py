"""The cost of ``segment --uncertainty tta``: time per added TTA pass against a plain run, on a synthetic phantom.

    python benchmarks/uncertainty.py [--models demo-spleen demo-lesion] [--size small] [--repeat 3] [--threads 2]
        [--flips i,j,k]

For each shipped demo model: one phantom from ``lesionseg synth`` (computed, not patient data), the model loaded
once (torch, so that no compilation is timed), one untimed warm-up, then the best of ``--repeat`` runs of the plain
path (``segment_image``) and of the uncertainty path (``segment_uncertain``) with the ``--flips`` members, both in
memory from the same image.
Printed per model: both wall times, their ratio, the TTA passes, the time of one pass's windows (median of the
passes) against the plain run's whole time, and the added time per added pass.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path


def best_of(repeat: int, run) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["demo-spleen", "demo-lesion"])
    parser.add_argument("--size", default="small", help="lesionseg synth --size (small or full)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--flips",
        default="i,j,k",
        help="the TTA flips timed, whatever the model's spec declares (the demo models declare none: they were "
        "trained without flips; the cost of a pass does not depend on it)",
    )
    args = parser.parse_args()
    flips = tuple(flip for flip in args.flips.split(",") if flip)
    if not flips:
        parser.error("--flips: give at least one flip, so that there is an added pass to time")

    import torch

    from lesionseg.data.study import SynthOptions, generate_cohort
    from lesionseg.inference.pipeline import load_model, segment_image
    from lesionseg.inference.progress import Progress
    from lesionseg.inference.uncertainty import segment_uncertain
    from lesionseg.io import read_image

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work:
        generate_cohort(Path(work) / "cohort", 1, seed=0, options=SynthOptions(size=args.size, orientation="LPS"))
        image = read_image(next((Path(work) / "cohort").glob("*/image.nii.gz")))
    rows = []
    for name in args.models:
        model = load_model(name, args.device, backend="torch")
        spec = dataclasses.replace(model.spec, inference=dataclasses.replace(model.spec.inference, tta=flips))
        model = dataclasses.replace(model, spec=spec)
        segment_image(image, model)  # warm-up: first-call allocations and kernel choices
        plain_s, _ = best_of(args.repeat, lambda model=model: segment_image(image, model))
        tta_s, result = best_of(args.repeat, lambda model=model: segment_uncertain(image, model, Progress()))
        passes = result.passes
        rows.append(
            {
                "model": name,
                "image_ijk": list(image.size),
                "plain_s": round(plain_s, 3),
                "tta_s": round(tta_s, 3),
                "ratio": round(tta_s / plain_s, 2),
                "passes": passes,
                "pass_windows_s": round(statistics.median(result.pass_seconds), 3),
                "added_per_pass_s": round((tta_s - plain_s) / (passes - 1), 3),
                "added_per_pass_ratio": round((tta_s - plain_s) / (passes - 1) / plain_s, 2),
                "lesions": len(result.lesions),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    machine = {"cpu": platform.processor() or platform.machine(), "threads": args.threads, "device": args.device}
    print(json.dumps({"machine": machine, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
