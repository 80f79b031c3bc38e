"""``lesionseg dataset``: create, add to, check, split, export and list a training dataset."""

from __future__ import annotations

import argparse
import json
import os
import socket

from lesionseg.commands.segment import add_channel_options
from lesionseg.errors import UserError


def _pairs(text: str | None, what: str) -> dict[str, int]:
    """``NAME=VALUE,NAME=VALUE`` → {name: value}; a name given twice is refused."""
    out: dict[str, int] = {}
    seen: dict[str, str] = {}
    for item in filter(None, (text or "").split(",")):
        name, sep, value = item.rpartition("=")
        if not sep or not name.strip() or not value.strip().lstrip("-").isdigit():
            raise UserError(f"{what}: {item!r} is not NAME=VALUE (e.g. {what} spleen=1,lesion=2)")
        if int(value) < 0:
            raise UserError(f"{what}: {item!r}: label values cannot be negative")
        key = name.strip().lower()
        if key in seen:
            raise UserError(f"{what}: {name.strip()!r} is given twice ({seen[key]} and {item.strip()}); give each once")
        seen[key] = item.strip()
        out[name.strip()] = int(value)
    return out


def _label_table(text: str) -> dict[int, str]:
    """``--labels`` of ``dataset init`` as {value: name}: foreground labels only, each value and name once."""
    pairs = _pairs(text, "--labels")
    if not pairs:
        raise UserError("--labels: give at least one foreground label, e.g. --labels spleen=1")
    table: dict[int, str] = {}
    for name, value in pairs.items():
        if value == 0:
            raise UserError(
                f"--labels {name}=0: 0 is the background, which every dataset has; number the labels from 1 "
                f"(e.g. {name}=1)"
            )
        if value in table:
            raise UserError(f"--labels: {table[value]!r} and {name!r} both have value {value}; give each its own")
        table[value] = name
    return table


HELP = "curate a training dataset (Decathlon layout, versioned)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)

    init = sub.add_parser("init", help="create an empty dataset")
    init.add_argument("dataset", help="dataset folder to create")
    init.add_argument("--labels", required=True, help="label names and values, e.g. spleen=1,lesion=2")
    init.add_argument("--lesion-labels", default="", help="names of the labels that count as lesions, e.g. lesion")
    init.add_argument("--name", help="dataset name (default: the folder name)")
    init.add_argument("--modality", help="the image modality of a single-channel dataset (default CT)")
    init.add_argument(
        "--channels",
        help="names of the input images of each case, in order, e.g. CT,PET (dataset add then takes --image once "
        "per channel; the first channel's grid is the case's). Default: one channel, named by --modality",
    )
    init.set_defaults(func=run_init)

    add = sub.add_parser(
        "add",
        help="add a case (or a new version of one)",
        description="Add a case, or with --case-id of an existing case a new version of it. An image the dataset "
        "already holds as another case (the same voxels, by content hash) is refused, naming that case: two copies "
        "would let training validate on an image it trained on. To change that case's label, add it again with "
        "--case-id of that case.",
    )
    add.add_argument("--dataset", required=True, help="dataset folder")
    add_channel_options(add, "--image", "dataset", "image file or DICOM series folder")
    add.add_argument("--seg", required=True, help="labelmap or .seg.nrrd on the (first) image's grid")
    add.add_argument("--label-map", help="segment name to dataset label value, e.g. Spleen=1,Tumour=2 (0 drops one)")
    add.add_argument("--drop-unmapped", action="store_true", help="drop named segments that match no dataset label")
    add.add_argument(
        "--case-id",
        help="case id; an existing id gets a new version (default: next case_NNNN). Cases of one patient or study "
        "stay on one side of a split",
    )
    add.add_argument(
        "--patient-id",
        help="PatientID of the source (kept only as a hash, to keep a patient's cases together in splits; "
        "read from the DICOM files or the image's JSON sidecar when not given)",
    )
    add.add_argument("--annotator", default=os.environ.get("USER", ""), help="who drew or checked the labels")
    add.add_argument("--source-model", help="ID@VERSION of the model that proposed the labels (AI-assisted)")
    add.add_argument("--study-uid", help="StudyInstanceUID of the source DICOM")
    add.add_argument("--series-uid", help="SeriesInstanceUID of the source DICOM")
    add.add_argument("--note", help="free text kept with this version")
    add.set_defaults(func=run_add)

    verify = sub.add_parser("verify", help="check hashes, grids and label values; exit 1 on problems")
    verify.add_argument("dataset")
    verify.add_argument("--repair", action="store_true", help="first finish any interrupted save")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=run_verify)

    split = sub.add_parser("split", help="store a train/validation/test split in dataset.json")
    split.add_argument("dataset")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--val", type=float, default=0.2, help="validation fraction")
    split.add_argument("--test", type=float, default=0.1, help="test fraction")
    split.add_argument("--exclude-lesion-free-from-train", action="store_true")
    split.set_defaults(func=run_split)

    remove = sub.add_parser("remove", help="take a case out of training (kept as a trash version)")
    remove.add_argument("dataset")
    remove.add_argument("case_id")
    remove.add_argument("--reason", default="")
    remove.set_defaults(func=run_remove)

    export = sub.add_parser("export-nnunet", help="write nnU-Net v2 raw layout")
    export.add_argument("dataset")
    export.add_argument("--output", required=True, help="nnUNet_raw folder")
    export.add_argument("--id", type=int, required=True, dest="dataset_id", help="nnU-Net dataset id (1..999)")
    export.add_argument("--name", help="name in DatasetXXX_Name (default: the dataset's name)")
    export.set_defaults(func=run_export)

    listing = sub.add_parser("list", help="list cases, versions and provenance")
    listing.add_argument("dataset")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=run_list)


def run_init(args: argparse.Namespace) -> int:
    from lesionseg.datasets import init_dataset

    table = _label_table(args.labels)
    names = {n.lower(): v for v, n in table.items()}
    lesion = []
    for name in filter(None, args.lesion_labels.split(",")):
        if name.strip().lower() not in names:
            raise UserError(f"--lesion-labels: {name!r} is not one of the labels {sorted(table.values())}")
        lesion.append(names[name.strip().lower()])
    channels = [c.strip() for c in (args.channels or "").split(",") if c.strip()] or None
    if channels and args.modality:
        raise UserError("give either --channels (names of each case's images) or --modality (one image), not both")
    dataset = init_dataset(args.dataset, table, args.name, args.modality or "CT", lesion, channels=channels)
    print(f"created dataset {dataset.root}")
    return 0


def run_add(args: argparse.Namespace) -> int:
    from lesionseg.datasets import add_case_from_files

    source = args.source_model
    if not args.image and not args.channel:
        raise UserError("give the case's image with --image PATH (or --channel NAME=PATH per channel)")
    if source and "@" not in source:
        raise UserError(f"--source-model {source!r}: give ID@VERSION, e.g. spleen-unet@1.2.0")
    provenance = {
        "annotator": args.annotator,
        "source_model": source,
        "study_uid": args.study_uid,
        "series_uid": args.series_uid,
        "patient_id": args.patient_id,
        "note": args.note,
        "host": socket.gethostname(),
        "tool": "lesionseg dataset add",
    }
    record = add_case_from_files(
        args.dataset,
        args.image,
        args.seg,
        _pairs(args.label_map, "--label-map"),
        args.case_id,
        provenance,
        args.drop_unmapped,
        named_channels=args.channel,
    )
    print(f"saved {record.case_id} version {record.version} (labels {list(record.labels_present)})")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from lesionseg.datasets import Dataset, recover, verify_dataset

    if args.repair:
        dataset = Dataset(args.dataset)
        with dataset.lock():
            for line in recover(dataset, full=True):
                print(f"repaired: {line}")
    report = verify_dataset(args.dataset)
    if args.json:
        print(json.dumps({"ok": report.ok, "problems": report.problems, "notes": report.notes}, indent=2))
    else:
        for note in report.notes:
            print(f"note: {note}")
        for problem in report.problems:
            print(f"PROBLEM: {problem}")
        print(f"{report.cases_checked} cases checked: " + ("OK" if report.ok else f"{len(report.problems)} problems"))
    return 0 if report.ok else 1


def run_split(args: argparse.Namespace) -> int:
    from lesionseg.datasets import split_dataset

    splits = split_dataset(args.dataset, args.seed, args.val, args.test, args.exclude_lesion_free_from_train)
    counts = ", ".join(f"{k} {len(splits[k])}" for k in ("train", "validation", "test", "excluded"))
    print(f"split with seed {splits['seed']}: {counts}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from lesionseg.datasets import remove_case

    number = remove_case(args.dataset, args.case_id, args.reason, os.environ.get("USER", ""))
    print(f"removed {args.case_id} (kept as version {number}; its files stay under versions/{args.case_id}/)")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from lesionseg.datasets import export_nnunet
    from lesionseg.io.outputs import check_output_folder

    # Only the inside-the-input and writability checks: the export refuses a non-empty Dataset folder itself.
    check_output_folder(args.output, [args.dataset], overwrite=True)
    print(export_nnunet(args.dataset, args.output, args.dataset_id, args.name))
    return 0


def run_list(args: argparse.Namespace) -> int:
    from lesionseg.datasets import Dataset

    dataset = Dataset(args.dataset)
    manifest = dataset.manifest() if dataset.exists() else dataset.require()
    rows = []
    for case_id, case in sorted(manifest["cases"].items()):
        newest = case["versions"][-1]
        rows.append(
            {
                "case": case_id,
                "status": case["status"],
                "versions": len(case["versions"]),
                "current": case["current"],
                "labels": newest.get("labels_present", []),
                "provenance": newest.get("provenance", {}),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            prov = row["provenance"]
            who = prov.get("annotator") or prov.get("removed_by") or "-"
            model = prov.get("source_model")
            model = f"{model}@{prov.get('source_model_version', '?')}" if model else "manual"
            print(
                f"{row['case']:<20} {row['status']:<8} v{row['current']} ({row['versions']} versions) "
                f"labels {row['labels']} by {who} [{model}]"
            )
        print(f"{sum(r['status'] == 'active' for r in rows)} active cases")
    return 0
