"""Our ``segment`` against MONAI's canonical spleen pipeline: same weights, same synthetic CT, file to file.

    python benchmarks/inference.py [--size 512 512 200] [--threads 2] [--device cpu]
    python benchmarks/inference.py --warm-repeat 3 [--size ...]   # the modules' warm worker instead
    python benchmarks/inference.py --backend openvino [--precision bf16]   # the network through OpenVINO
    python benchmarks/inference.py --sizes 256x256x100 384x384x100 512x512x200   # several sizes, one run

With ``--backend`` other than torch, one untimed run first compiles and caches the network (its time is printed as
``first_run_s``), and the output is also compared with the torch backend's (``dice_vs_torch``).

Prints both wall times, their ratio, the time of each stage, each one's peak resident memory (the process's
``VmHWM``, reset before each run through ``/proc/self/clear_refs``; both run in this process, so each peak includes
torch, MONAI and what the process already holds), and the Dice between the two labelmaps (with their foreground
sizes: two empty labelmaps would give a meaningless Dice of 1).  The weights are the spleen
spec's UNet after a few training steps on a phantom (the published weights cannot be downloaded here); the
timing does not depend on their values.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing"))


def synthetic_ct(size_ijk, spacing=(0.78, 0.78, 2.5)):
    from support.tiny_models import phantom_ct

    extent = np.array(size_ijk) * np.array(spacing)
    return phantom_ct(
        shape_kji=tuple(reversed(size_ijk)),
        spacing=spacing,
        body_radii_mm=tuple(extent * np.array([0.42, 0.32, 0.45])),
        blob_radii_mm=(40.0, 30.0, 50.0),
    )


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(f"{field}:")) / 1024


def reset_peak() -> bool:
    """Start this process's peak resident set (VmHWM) again from its present size; False where Linux cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_mb() -> float:
    """This process's peak resident set since the last :func:`reset_peak` (or since it started)."""
    import os

    try:
        return rss_mb(os.getpid(), "VmHWM")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def warm_repeat(args, size: list[int], folder: Path, source: Path, work: Path) -> None:
    """The modules' path: one warm worker, the same model, ``args.warm_repeat`` more patients after the first.

    Per request: wall time from submit to result as the module sees it, and the network stage (the ``inference``
    stage's events, stamped on arrival); the overhead of a repeat is its time beyond the network's. Memory: the
    worker's resident set when idle, before any model, with the model loaded, and after the model is dropped.
    """
    import os

    from lesionseg.io import read_image, write_image
    from lesionseg.jobs import EventKind, JobState, WarmWorker

    # The files the modules exchange with their worker: the volume as the engine's NRRD, a labelmap NRRD back.
    source = write_image(read_image(source), work / "input.nrrd", compress=False)

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    worker = WarmWorker(env=env).start()
    time.sleep(1.0)
    memory = {"idle_no_model_mb": round(rss_mb(worker.pid), 1)}
    runs = []
    try:
        for attempt in range(1 + args.warm_repeat):
            stamps: list[tuple[float, object]] = []
            started = time.perf_counter()
            request = worker.submit(
                str(folder),
                source,
                work / f"labels{attempt}.nrrd",
                device=args.device,
                backend=args.backend,
                precision=args.precision,
            )
            while not request.state.finished:
                now = time.perf_counter()
                stamps += [(now, event) for event in request.poll()]
                time.sleep(0.005)
            now = time.perf_counter()
            stamps += [(now, event) for event in request.poll()]
            assert request.state is JobState.SUCCEEDED, (request.error_text, worker.job.stderr_text[-2000:])
            total = next(t for t, e in stamps if e.kind is EventKind.RESULT) - started
            stages = [(t, e.data["stage"]) for t, e in stamps if e.kind is EventKind.STAGE]
            network = next(
                (stages[i + 1][0] - t for i, (t, name) in enumerate(stages[:-1]) if name == "inference"), float("nan")
            )
            model = next(e.data for _t, e in stamps if e.kind is EventKind.MODEL)
            ends = [t for t, _name in stages[1:]] + [now]
            stage_s = {name: round(end - t, 3) for (t, name), end in zip(stages, ends, strict=True)}
            runs.append(
                {
                    "run": attempt + 1,
                    "total_s": round(total, 3),
                    "network_s": round(network, 3),
                    "overhead_s": round(total - network, 3),
                    "model_reused": model["reused"],
                    "model_load_s": model["seconds"],
                    "stages_s": stage_s,
                }
            )
            print(json.dumps(runs[-1]), flush=True)
        time.sleep(1.0)
        memory["idle_model_loaded_mb"] = round(rss_mb(worker.pid), 1)
        worker.release()
        time.sleep(2.0)
        memory["idle_model_dropped_mb"] = round(rss_mb(worker.pid), 1)
    finally:
        worker.close()
    repeats = runs[1:]
    print(
        json.dumps(
            {
                "mode": "warm-repeat",
                "size": size,
                "backend": args.backend,
                "threads": args.threads,
                "device": args.device,
                "first_s": runs[0]["total_s"],
                "repeat_best_s": min(r["total_s"] for r in repeats),
                "repeat_overhead_best_s": min(r["overhead_s"] for r in repeats),
                "repeat_overhead_max_s": max(r["overhead_s"] for r in repeats),
                "worker_memory": memory,
                "machine": platform.processor() or platform.machine(),
            }
        )
    )


def parse_size(text: str) -> list[int]:
    parts = [int(n) for n in text.lower().split("x")]
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a size as IxJxK, e.g. 256x256x100")
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, nargs=3, default=[512, 512, 200])
    parser.add_argument(
        "--sizes", type=parse_size, nargs="+", metavar="IxJxK", help="several sizes in one run (instead of --size)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", choices=["auto", "torch", "openvino"], default="torch")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None)
    parser.add_argument("--repeat", type=int, default=1, help="alternating runs of each; the best is reported")
    parser.add_argument(
        "--warm-repeat",
        type=int,
        default=0,
        metavar="N",
        help="measure the modules' warm worker instead: a first segmentation, then N more with the model kept",
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from support.tiny_models import trained_unet_state, write_model_folder

    from lesionseg.io import write_image

    work = Path(tempfile.mkdtemp(prefix="lesionseg-bench-"))
    spec = json.loads(
        (Path(__file__).resolve().parents[1] / "lesionseg/resources/models/spleen_ct_segmentation.json").read_text()
    )
    spec["id"], spec["weights"] = "bench_spleen", {"format": "state_dict", "path": "model.pt", "sha256": None}
    spec["preprocessing"]["orientation_quirk"] = "reproduce_monai"  # as MONAI's canonical pipeline, compared below
    folder = write_model_folder(work / "bench_spleen", spec, trained_unet_state(steps=30))
    summary = []
    for size in args.sizes or [args.size]:
        source = write_image(synthetic_ct(size), work / "ct.nii.gz")
        print(f"CT {size} written; {torch.get_num_threads()} threads, device {args.device}", flush=True)
        if args.warm_repeat:
            warm_repeat(args, size, folder, source, work)
            continue
        summary.append(compare(args, size, folder, source, work))
    if len(summary) > 1:
        print("\n| size | ours (s) | MONAI (s) | ratio | ours peak RSS (MB) | MONAI peak RSS (MB) | ratio | Dice |")
        print("|------|---------:|----------:|------:|-------------------:|--------------------:|------:|-----:|")
        for row in summary:
            peak = row["peak_rss_mb"]
            print(
                f"| {'×'.join(map(str, row['size']))} | {row['ours_s']} | {row['monai_s']} | {row['speedup']} | "
                f"{peak['ours']} | {peak['monai']} | {peak['ratio']} | {row['dice']} |"
            )


def compare(args, size: list[int], folder: Path, source: Path, work: Path) -> dict:
    """Ours and MONAI's canonical pipeline on ``source``, alternating; the best run of each, with its peak memory."""
    import nibabel as nib
    import torch
    from engine.test_inference import monai_canonical
    from support.tiny_models import dice

    from lesionseg.inference import segment_file
    from lesionseg.io import read_image
    from lesionseg.models import load_spec

    def run_ours(backend: str | None = None, output: str = "ours.nii.gz") -> tuple[float, dict, dict, float]:
        stage_times: dict[str, float] = {}
        clock = {"stage": None, "t": time.perf_counter()}

        def on_event(event: dict) -> None:
            if event["event"] == "stage":
                now = time.perf_counter()
                if clock["stage"]:
                    stage_times[clock["stage"]] = round(now - clock["t"], 2)
                clock.update(stage=event["stage"], t=now)

        reset_peak()
        started = time.perf_counter()
        result = segment_file(
            str(folder),
            source,
            work / output,
            device=args.device,
            progress=on_event,
            backend=backend or args.backend,
            precision=args.precision,
        )
        stage_times[clock["stage"]] = round(time.perf_counter() - clock["t"], 2)
        return time.perf_counter() - started, stage_times, result, peak_mb()

    def run_monai() -> tuple[float, dict, np.ndarray, float]:
        reset_peak()
        started = time.perf_counter()
        stage_times: dict[str, float] = {}
        weights = torch.load(folder / "model.pt", weights_only=True)
        labels = monai_canonical(source, load_spec(folder / "spec.json"), weights, stage_times)
        nib.save(nib.Nifti1Image(labels.astype(np.uint8), nib.load(str(source)).affine), str(work / "monai.nii.gz"))
        return time.perf_counter() - started, stage_times, labels, peak_mb()

    extra: dict = {}
    if args.backend != "torch":
        first = run_ours()
        extra["first_run_s"] = round(first[0], 2)
        print(f"first run (compiles and caches the network): {first[0]:.1f} s {first[1]}", flush=True)
        torch_labels = read_image(run_ours("torch", "torch.nii.gz")[2]["output"]).array
        extra["dice_vs_torch"] = round(dice(read_image(first[2]["output"]).array, torch_labels), 5)
    # Alternate the two and keep each one's best run: the machine is shared, and load drifts.
    best_ours: tuple = (float("inf"),)
    best_monai: tuple = (float("inf"),)
    peaks = {"ours": 0.0, "monai": 0.0}
    for attempt in range(args.repeat):
        ours_run = run_ours()
        print(f"[{attempt + 1}] ours:  {ours_run[0]:.1f} s {ours_run[1]} peak {ours_run[3]:.0f} MB", flush=True)
        monai_run = run_monai()
        print(f"[{attempt + 1}] MONAI: {monai_run[0]:.1f} s {monai_run[1]} (+ NIfTI write) peak {monai_run[3]:.0f} MB")
        best_ours = min(best_ours, ours_run, key=lambda r: r[0])
        best_monai = min(best_monai, monai_run, key=lambda r: r[0])
        peaks = {"ours": max(peaks["ours"], ours_run[3]), "monai": max(peaks["monai"], monai_run[3])}
    ours_s, stage_times, ours, _ = best_ours
    monai_s, monai_times, reference, _ = best_monai
    labels = read_image(ours["output"]).array.transpose(2, 1, 0)
    row = {
        "size": size,
        "threads": args.threads,
        "repeat": args.repeat,
        "device": args.device,
        "backend": ours["backend"],
        "precision": ours["precision"],
        **extra,
        "ours_s": round(ours_s, 2),
        "monai_s": round(monai_s, 2),
        "speedup": round(monai_s / ours_s, 2),
        "peak_rss_mb": {
            "ours": round(peaks["ours"]),
            "monai": round(peaks["monai"]),
            "ratio": round(peaks["monai"] / peaks["ours"], 2),
        },
        "dice": round(dice(labels, reference), 5),
        "foreground_voxels": {"ours": int((labels > 0).sum()), "monai": int((reference > 0).sum())},
        "ours_stages_s": stage_times,
        "monai_stages_s": monai_times,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    main()
