"""Which case to annotate next, in LesionSegTraining: rank a folder of unlabelled volumes in the background, show
the ranking as a table, load a ranked case, and carry its rank to the training case it becomes. Qt-free.

The ranking is ``lesionseg rank --progress jsonl`` (:mod:`lesionseg.inference.ranking`): each case segmented with
flip test-time augmentation and scored by how unsure the model is, most uncertain first. A loaded case's volume node
holds its rank as ``LesionSeg.Rank*`` attributes; saving it as training data records them in the case's provenance
(:func:`rank_provenance`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lesionseg.jobs import EventKind, Job, JobEvent, JobState
from LesionSegLib.jobs import BackgroundRun
from LesionSegLib.segmenting import child_environment
from LesionSegLib.tables import Column, fill_table_node

METHODS = ("entropy", "mutual_information", "region_entropy", "lesion_count", "least_foreground")
RANKING_TABLE_KIND = "annotation ranking"
# On a ranked case's volume node: what its rank was, by which model and method, and its score.
RANK_ATTRIBUTES = {
    "rank": "LesionSeg.Rank",
    "method": "LesionSeg.RankMethod",
    "score": "LesionSeg.RankScore",
    "model": "LesionSeg.RankModel",
    "case": "LesionSeg.RankedCase",
}
# One column a ranking method (METHODS), each case's score by it.
SCORE_COLUMNS = (
    Column("entropy", "Entropy", unit="nat·mL"),
    Column("mutual_information", "Mutual information", unit="nat·mL"),
    Column("region_entropy", "Region entropy", unit="nat"),
    Column("lesion_count", "Predicted lesions", kind="int"),
    Column("foreground_ml", "Predicted foreground", unit="mL"),  # least_foreground's, smallest first
)
RANKING_COLUMNS = (Column("rank", "Rank", kind="int"), Column("case", "Case", kind="string"), *SCORE_COLUMNS)


class RankingRun(BackgroundRun):
    """``lesionseg rank`` on a folder of unlabelled volumes (or a dataset), in a child process the panel polls."""

    what = "Ranking"
    cancelled_text = "Ranking cancelled."

    def __init__(
        self,
        images: str | Path,
        model_id: str,
        models_dir: str | Path,
        python: str,
        device: str = "auto",
        method: str = "entropy",
        environment: Mapping[str, str] | None = None,
    ) -> None:
        from lesionseg.errors import UserError
        from lesionseg.inference.ranking import check_method_for, rank_inputs
        from lesionseg.models import ModelRegistry

        if method not in METHODS:
            raise ValueError(f"unknown ranking method {method!r}; use one of {', '.join(METHODS)}")
        if not model_id:
            raise ValueError("choose the model whose uncertainty ranks the cases")
        try:
            rank_inputs(images)  # an empty or missing folder is refused before anything starts
            if method == "mutual_information":  # needs test-time flips: refused before anything starts
                try:
                    spec = ModelRegistry(models_dir).get(model_id)
                except ValueError:
                    spec = None  # an unknown or unreadable model: the ranking run says so
                if spec is not None:
                    check_method_for(spec, method)
        except UserError as error:
            raise ValueError(str(error).replace("--method ", "Rank by ", 1)) from error
        self.method = method
        self.work_dir = Path(tempfile.mkdtemp(prefix="LesionSegRank-"))
        self.fraction = 0.0
        self.log: list[str] = []
        self.ranking: dict[str, Any] | None = None
        argv = [python, "-m", "lesionseg", "rank", "--model", model_id, "--images", str(images), "--method", method]
        argv += ["--output", str(self.work_dir / "ranking"), "--models-dir", str(models_dir), "--device", device]
        self.job = Job([*argv, "--progress", "jsonl"], env=child_environment(environment))

    def start(self) -> RankingRun:
        self.job.start()
        return self

    def poll(self) -> bool:
        """Drain the job's output; True once the ranking has arrived. New log lines are in ``log``."""
        self.log = []
        for event in self.job.poll():
            self.read(event)
        return self.ranking is not None

    def read(self, event: JobEvent) -> None:
        data = event.data
        if event.kind is EventKind.PROGRESS and data.get("percent") is not None:
            self.fraction = float(data["percent"]) / 100.0
        elif event.kind is EventKind.RESULT:
            self.ranking = data["ranking"]
        elif event.kind is EventKind.ERROR:
            self.log.append(f"Error: {data.get('type', '')}: {data.get('text', '')}")
        elif event.kind is EventKind.FINISHED:
            self.log.append(f"ranking {data.get('state')}")
            if data.get("text") and event.state is not JobState.SUCCEEDED:
                self.log.append(str(data["text"])[-2000:])
        elif data.get("text"):
            self.log.append(str(data["text"]))

    def rows(self) -> list[dict[str, Any]]:
        """The cases, most uncertain first (each with rank, case, images and every score)."""
        self.require_success("the ranking has not finished yet")
        return list(self.ranking["cases"]) if self.ranking else []


def ranking_models(models_dir: str | Path) -> list[str]:
    """Ids of the models that can rank now: LesionSeg's own with their weights on disk (an imported nnU-Net model has
    no flip-TTA uncertainty in the engine)."""
    from lesionseg.models import ModelRegistry
    from LesionSegLib import nnunetmodels

    specs = ModelRegistry(models_dir).specs().values()
    return [
        spec.id
        for spec in specs
        if not nnunetmodels.is_nnunet_spec(spec) and spec.weights_path is not None and spec.weights_path.is_file()
    ]


def ranking_table(scene: Any, rows: list[dict[str, Any]], name: str, node: Any | None = None) -> Any:
    """The ranking in a table node (new, or ``node`` refilled)."""
    return fill_table_node(scene, name, RANKING_COLUMNS, rows, RANKING_TABLE_KIND, node)


def load_ranked_case(scene: Any, ranking: Mapping[str, Any], row: Mapping[str, Any]) -> Any:
    """A volume node of the ranked case's (first) image, named after the case, carrying its rank."""
    from lesionseg.inference.ranking import score_column
    from lesionseg.io import read_image
    from lesionseg.mrml import volume_node_from_image

    image = read_image(row["images"][0])
    node = volume_node_from_image(scene, image, str(row["case"]))
    values = {
        "rank": row["rank"],
        "method": ranking["method"],
        "score": row[score_column(ranking["method"])],
        "model": ranking["model"],
        "case": row["case"],
    }
    for key, attribute in RANK_ATTRIBUTES.items():
        node.SetAttribute(attribute, str(values[key]))
    return node


def rank_provenance(volumeNode: Any) -> dict[str, Any]:
    """What a ranked case's volume node says of its rank, for the training case's provenance (empty if unranked)."""
    if volumeNode is None or not volumeNode.GetAttribute(RANK_ATTRIBUTES["rank"]):
        return {}
    found = {key: volumeNode.GetAttribute(attribute) for key, attribute in RANK_ATTRIBUTES.items()}
    return {
        "ranked": {
            "rank": int(found["rank"]),
            "method": found["method"],
            "score": float(found["score"]),
            "model": found["model"],
            "case": found["case"],
        }
    }
