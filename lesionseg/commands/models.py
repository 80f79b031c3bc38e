"""``lesionseg models list|download``: the models this machine knows, and fetching verified weights."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "list models or download their weights"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models-dir", help="user models folder (default $LESIONSEG_MODELS_DIR or ~/.lesionseg/models)"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    listing = actions.add_parser("list", help="built-in and user models, with weights status")
    listing.add_argument("--json", action="store_true", help="print JSON")
    download = actions.add_parser("download", help="fetch a model's weights and verify their hash")
    download.add_argument("id", help="model id")
    importing = actions.add_parser(
        "import", help="copy an nnU-Net v2 result folder or export zip into the models folder"
    )
    importing.add_argument("source", help="Dataset*/ folder, Dataset*/Trainer__Plans__config/ or nnUNetv2 export zip")
    importing.add_argument("--id", help="model id (default: the dataset folder's name, lower case)")
    importing.add_argument(
        "--lesion-labels", nargs="+", type=int, metavar="N", help="label values that are lesions (default: by name)"
    )
    importing.add_argument(
        "--orientation",
        choices=["as-stored", "RAS"],
        default="as-stored",
        help="how the model's training images were oriented: as stored (nnU-Net's own) or RAS-canonical",
    )
    importing.add_argument("--overwrite", action="store_true", help="replace an imported model with the same id")


def _status(entry) -> str:
    if not entry.weights_present:
        return "missing"
    if entry.problem:
        return "FAILED verification"
    return "present, verified" if entry.verified else "present, unverified (no hash)"


def _kind(spec) -> str:
    kind = "lesion" if spec.lesion_labels else "organ"
    return f"{kind}, cascade" if spec.cascade else kind


def run(args: argparse.Namespace) -> int:
    from lesionseg.models.registry import ModelRegistry

    registry = ModelRegistry(args.models_dir)
    if args.action == "import":
        from lesionseg.models.nnunet_import import import_nnunet_model

        folder = import_nnunet_model(
            args.source,
            registry.root,
            args.id,
            args.lesion_labels,
            "as stored" if args.orientation == "as-stored" else "RAS",
            args.overwrite,
        )
        print(f"{folder.name}: imported into {folder} (checkpoint hashes recorded; segment --model {folder.name})")
        return 0
    if args.action == "download":
        from lesionseg.models.download import download_weights

        spec = registry.get(args.id)

        def show(done: int, total: int | None) -> None:
            text = f"{done / 1e6:.1f} MB" + (f" of {total / 1e6:.1f} MB" if total else "")
            sys.stderr.write(f"\rdownloading {spec.id}: {text}")

        path = download_weights(spec, progress=show)
        sys.stderr.write("\n")
        print(f"{spec.id}: weights verified and installed at {path}")
        return 0
    if args.action not in (None, "list"):
        raise ValueError(f"unknown action {args.action!r}")
    from lesionseg.models.hashcache import HashCache
    from lesionseg.models.nnunet_import import imported_models

    # Remembered hashes: a repeat listing reads only weights changed since (hashcache.py says what that trusts).
    cache = HashCache(registry.root)
    entries = registry.entries(cache=cache)
    nnunet_models = imported_models(registry.root, cache)
    if getattr(args, "json", False):
        rows = [
            {
                "id": e.spec.id,
                "version": e.spec.version,
                "origin": e.origin,
                "weights_present": e.weights_present,
                "verified": e.verified,
                "weights_path": str(e.spec.weights_path),
                "lesion_labels": list(e.spec.lesion_labels),
                "cascade": None if e.spec.cascade is None else vars(e.spec.cascade),
                "problem": e.problem,
            }
            for e in entries
        ]
        rows += [
            {
                "id": m["id"],
                "version": "",
                "origin": "nnunet",
                "weights_present": "missing" not in m["problem"],
                "verified": m["verified"],
                "weights_path": m["folder"],
                "lesion_labels": m.get("lesion_labels") or [],
                "cascade": None,
                "problem": m["problem"],
                "configurations": m.get("configurations"),
                "orientation": m.get("orientation"),
            }
            for m in nnunet_models
        ]
        print(json.dumps(rows, indent=2))
        return 0
    print(f"models folder: {registry.root}")
    for e in entries:
        print(f"{e.spec.id:<32} {e.spec.version:<10} {e.origin:<9} {_kind(e.spec):<15} weights: {_status(e)}")
        if e.problem:
            print(f"    {e.problem}")
    for m in nnunet_models:
        kind = "lesion" if m.get("lesion_labels") else "organ"
        state = "present, verified" if m["verified"] else "FAILED verification"
        print(f"{m['id']:<32} {'nnU-Net':<10} {'user':<9} {kind:<15} weights: {state}")
        if m["problem"]:
            print(f"    {m['problem']}")
    for folder, problem in registry.problems.items():
        print(f"{folder:<32} {'?':<10} {'user':<9} {'?':<15} unreadable: {problem}")
    return 0
