"""``lesionseg rank``: order unlabelled cases by how unsure a model is of them, to choose what to annotate next."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

HELP = "rank unlabelled cases by the model's uncertainty (which case to annotate next)"
DESCRIPTION = (
    "Segment each case with flip test-time augmentation (as segment --uncertainty tta) and rank the cases "
    "by how unsure the model is, most uncertain first. Writes OUT.csv and OUT.json with every score."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model id (see `lesionseg models list`) or model folder")
    parser.add_argument(
        "--images",
        required=True,
        metavar="FOLDER_OR_DATASET",
        help="a folder of images (.nii.gz, .nrrd, ..., or DICOM series subfolders) or a dataset folder (its cases)",
    )
    parser.add_argument(
        "--method",
        default="entropy",
        help="what ranks a case: entropy (summed entropy, nat·mL; default), mutual_information (where the TTA "
        "members disagree, nat·mL), region_entropy (mean entropy, nat, over the voxels given a foreground "
        "probability of at least 0.05: does not grow with the body), lesion_count (predicted lesions) or "
        "least_foreground (the smallest predicted foreground first: for an organ every case has, the cases the model "
        "misses with confidence)",
    )
    parser.add_argument("--output", required=True, help="OUT: writes OUT.csv and OUT.json (OUT may end in either)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT.csv and OUT.json if they exist")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument(
        "--backend", choices=["auto", "torch", "openvino"], default="auto", help="what runs the network, as for segment"
    )
    parser.add_argument(
        "--models-dir", help="user models folder (default $LESIONSEG_MODELS_DIR or ~/.lesionseg/models)"
    )
    parser.add_argument("--progress", choices=["jsonl"], help="print JSON-lines events on stdout (as segment does)")


def run(args: argparse.Namespace) -> int:
    from lesionseg.jobs import protocol

    if args.progress != "jsonl":
        return _rank(args, lambda line: print(line, file=sys.stderr))
    protocol.exit_on_terminate()

    def scored(number: int, total: int) -> None:
        percent = round(100 * number / total, 2)
        protocol.write_event(protocol.progress(percent, "rank", cases_done=number, cases_total=total))

    try:
        return _rank(args, lambda line: protocol.write_event(protocol.message(line)), scored)
    except Exception as error:
        # The modules show this text: the one line the command line prints, never a traceback.
        protocol.write_event(protocol.error(error))
        raise


def _rank(
    args: argparse.Namespace, say: Callable[[str], None], cases_done: Callable[[int, int], None] | None = None
) -> int:
    from lesionseg.inference.ranking import check_method, rank_cases, rank_inputs, ranking_paths, write_ranking
    from lesionseg.io.outputs import check_output
    from lesionseg.jobs import protocol

    check_method(args.method)
    for path in ranking_paths(args.output):
        check_output(path, [args.images, args.model], args.overwrite)
    rank_inputs(args.images)  # an empty or missing folder is refused before the model loads
    from lesionseg.inference.pipeline import load_model

    ranking = rank_cases(
        load_model(args.model, args.device, args.models_dir, args.backend),
        args.images,
        args.method,
        args.device,
        args.models_dir,
        say=say,
        cases_done=cases_done,
    )
    paths = write_ranking(ranking, args.output)
    if args.progress == "jsonl":
        protocol.write_event(protocol.result(output=str(paths[1]), model=ranking["model"], ranking=ranking))
    else:
        for path in paths:
            print(path)
    return 0
