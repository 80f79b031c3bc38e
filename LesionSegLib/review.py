"""Reviewing a lesion segmentation lesion by lesion: accept, reject, undo, step by confidence (Qt-free).

A review lists the connected lesions of the node's lesion segments (as the lesion table counts them) with
the model's confidence when the result was made with uncertainty. Its state is a JSON node attribute,
:data:`REVIEW_ATTRIBUTE`, on the segmentation node itself, so a saved scene reopens with every status.

Rejecting a lesion removes exactly its voxels from its segment; accepting it locks it against rejection.
Both can be undone with :func:`undo`. The undo stack lives in memory, one per node, and does not survive
a scene reload (the statuses do): a reopened scene starts with nothing to undo.

Which segments hold lesions: those the model's uncertainty rows name (they come from the spec's
``lesion_labels``); without them, those whose name or terminology type reads as a lesion
(:func:`lesionseg.labels.named_like_lesion`); when none does, every segment.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

import lesionseg.mrml
from lesionseg.image import Image
from lesionseg.labels import LabelInfo, named_like_lesion
from lesionseg.metrics import lesion_table
from lesionseg.metrics.lesions import connected_components
from LesionSegLib.uncertainty import UNCERTAINTY_LESIONS_ATTRIBUTE

REVIEW_ATTRIBUTE = "LesionSeg.Review"
# Written by the module when it loads a result made with uncertainty (LesionSegLib.uncertainty): the engine's
# per-lesion rows as JSON.
UNCERTAINTY_ATTRIBUTE = UNCERTAINTY_LESIONS_ATTRIBUTE
LABEL_VALUE_TAG = "LesionSeg.LabelValue"  # the model's label value, on each segment of a result node

UNREVIEWED = "unreviewed"
ACCEPTED = "accepted"
REJECTED = "rejected"
STATUSES = (UNREVIEWED, ACCEPTED, REJECTED)


@dataclass
class ReviewedLesion:
    """One connected lesion of one segment, and what the reviewer decided about it."""

    id: int
    segment_id: str
    segment: str
    centroid_ras_mm: list[float]
    volume_mm3: float
    voxels: int
    seed_kji: list[int]  # one voxel of the lesion on the volume's grid: finds it again after other edits
    confidence: float | None = None
    status: str = UNREVIEWED
    reviewer: str = ""
    time: str = ""


@dataclass
class Review:
    """The lesions of a segmentation under review, with the volume whose grid their voxels are on."""

    volume_id: str
    lesion_segments: list[str]
    lesions: list[ReviewedLesion] = field(default_factory=list)
    min_volume_mm3: float = 0.0
    started: str = ""
    # Each segment's voxels when the review started (by segment id): a saved case compares them with its own,
    # less what was rejected, to record the annotator's edits.
    segment_voxels: dict[str, int] = field(default_factory=dict)

    def lesion(self, lesion_id: int) -> ReviewedLesion:
        for lesion in self.lesions:
            if lesion.id == lesion_id:
                return lesion
        raise ValueError(f"the review has no lesion {lesion_id}; it lists lesions {[x.id for x in self.lesions]}")

    def counts(self) -> dict[str, int]:
        return {status: sum(1 for x in self.lesions if x.status == status) for status in STATUSES}

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Review:
        data = json.loads(text)
        lesions = [ReviewedLesion(**row) for row in data.pop("lesions", [])]
        return cls(lesions=lesions, **data)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds")


def review_of(segmentation_node: Any) -> Review | None:
    """The review saved on the node, or None when none was started."""
    text = segmentation_node.GetAttribute(REVIEW_ATTRIBUTE) if segmentation_node is not None else None
    return Review.from_json(text) if text else None


def saved_review(segmentation_node: Any) -> Review:
    """The review saved on the node; refuses a node on which none was started."""
    review = review_of(segmentation_node)
    if review is None:
        name = segmentation_node.GetName() if segmentation_node is not None else "the segmentation"
        raise ValueError(f"no lesion review of {name!r} has been started; start the review first")
    return review


def _save(segmentation_node: Any, review: Review) -> None:
    segmentation_node.SetAttribute(REVIEW_ATTRIBUTE, review.to_json())


def uncertainty_rows(segmentation_node: Any) -> list[dict[str, Any]]:
    """The model's per-lesion uncertainty rows on the node (:data:`UNCERTAINTY_ATTRIBUTE`); empty without."""
    text = segmentation_node.GetAttribute(UNCERTAINTY_ATTRIBUTE)
    if not text:
        return []
    rows = json.loads(text)
    if not isinstance(rows, list):
        raise ValueError(f"{UNCERTAINTY_ATTRIBUTE} of {segmentation_node.GetName()!r} is not a list of lesion rows")
    return rows


def _tag(segment: Any, name: str) -> str:
    import vtk

    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else ""


def _terminology_type(segment: Any) -> str:
    parts = _tag(segment, segment.GetTerminologyEntryTagName()).split("~")
    return parts[2] if len(parts) > 2 else ""


def lesion_segment_ids(segmentation_node: Any) -> list[str]:
    """The ids of the segments that hold lesions (see the module docstring for how they are chosen)."""
    segmentation = segmentation_node.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    named = {str(row.get("name", "")) for row in uncertainty_rows(segmentation_node)}
    chosen = [i for i in ids if segmentation.GetSegment(i).GetName() in named]
    if not chosen:
        chosen = [
            i
            for i in ids
            if named_like_lesion(segmentation.GetSegment(i).GetName())
            or named_like_lesion(_terminology_type(segmentation.GetSegment(i)))
        ]
    return chosen or ids


def _segment_mask(segmentation_node: Any, segment_id: str, grid: Any) -> Image:
    labels, _ = lesionseg.mrml.labelmap_from_segmentation_node(segmentation_node, grid, {segment_id: 1})
    return labels


def _segment_voxels(segmentation_node: Any, grid: Any) -> dict[str, int]:
    """Each segment's voxel count on ``grid`` (a volume node or an Image), by segment id."""
    segmentation = segmentation_node.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]
    return {
        segment_id: int(np.count_nonzero(_segment_mask(segmentation_node, segment_id, grid).array))
        for segment_id in ids
    }


def _segment_lesions(mask: Image) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The connected lesions of one segment's mask: the component array and the engine's row of each.

    Each component is given its own label value, so the engine's lesion table has one row per component
    and its ``label`` names that component in the array.
    """
    components, _ = connected_components(mask.array != 0, mask.spacing)
    return components, lesion_table(mask.with_array(components.astype(np.int32)))


def _seeds(components: np.ndarray) -> dict[int, list[int]]:
    """One voxel (k, j, i) of each component, searched in its bounding box only (a CT has millions of voxels)."""
    from scipy import ndimage

    seeds = {}
    for number, box in enumerate(ndimage.find_objects(components), start=1):
        if box is not None:
            first = np.argwhere(components[box] == number)[0]
            seeds[number] = [int(v) + s.start for v, s in zip(first, box, strict=True)]
    return seeds


def _distance(a: Sequence[float], b: Sequence[float]) -> float:
    return float(math.dist([float(v) for v in a], [float(v) for v in b]))


def _segment_label_value(segment: Any) -> int | None:
    value = _tag(segment, LABEL_VALUE_TAG)
    return int(value) if value else None


def match_confidence(
    lesions: Sequence[ReviewedLesion], rows: Sequence[dict[str, Any]], segmentation_node: Any, voxel_mm: float
) -> None:
    """Give each lesion the confidence of the uncertainty row of its label with the nearest centroid.

    One row per lesion, nearest pairs first; a row further than the radius of a sphere of its volume
    plus a voxel does not describe the lesion (the reviewer drew it, or edited it away from the model's).
    """
    segmentation = segmentation_node.GetSegmentation()
    pairs = []
    for index, lesion in enumerate(lesions):
        segment = segmentation.GetSegment(lesion.segment_id)
        value = _segment_label_value(segment) if segment is not None else None
        for number, row in enumerate(rows):
            if row.get("name") != lesion.segment and (value is None or row.get("label") != value):
                continue
            distance = _distance(lesion.centroid_ras_mm, row["centroid_ras_mm"])
            radius = (3.0 * float(row.get("volume_mm3", 0.0)) / (4.0 * math.pi)) ** (1.0 / 3.0)
            if distance <= radius + voxel_mm:
                pairs.append((distance, index, number))
    taken_lesions: set[int] = set()
    taken_rows: set[int] = set()
    for _distance_mm, index, number in sorted(pairs):
        if index in taken_lesions or number in taken_rows:
            continue
        taken_lesions.add(index)
        taken_rows.add(number)
        confidence = rows[number].get("confidence")
        lesions[index].confidence = None if confidence is None else float(confidence)


def check_lesion_inputs(
    segmentation_node: Any, volume_node: Any, min_volume_mm3: float, doing: str, no_volume: str
) -> None:
    """Refuse a missing node or a negative minimum volume, saying what to choose (for the lesion table too);
    ``no_volume`` is the message for a missing volume."""
    if segmentation_node is None:
        raise ValueError(f"choose the segmentation whose lesions to {doing}")
    if volume_node is None:
        raise ValueError(no_volume)
    if min_volume_mm3 < 0:
        raise ValueError(f"the minimum lesion volume must be 0 mm³ or more, got {min_volume_mm3}")


def start_review(
    segmentation_node: Any, volume_node: Any, min_volume_mm3: float = 0.0, restart: bool = False
) -> Review:
    """List the lesions of the node's lesion segments for review, or return the review the node holds.

    A node that already holds a review (e.g. from a reopened scene) keeps it and its statuses; ``restart``
    lists the lesions anew, all unreviewed, and forgets what there was to undo. Lesions smaller than
    ``min_volume_mm3`` are not listed, so they are never accepted.
    """
    check_lesion_inputs(
        segmentation_node,
        volume_node,
        min_volume_mm3,
        "review",
        "choose the volume the segmentation was made on; the lesions are found on its grid",
    )
    existing = review_of(segmentation_node)
    if existing is not None and not restart:
        return existing
    segmentation = segmentation_node.GetSegmentation()
    segment_ids = lesion_segment_ids(segmentation_node)
    lesions: list[ReviewedLesion] = []
    grid = lesionseg.mrml.image_from_volume_node(volume_node)
    for segment_id in segment_ids:
        mask = _segment_mask(segmentation_node, segment_id, grid)
        components, rows = _segment_lesions(mask)
        seeds = _seeds(components)
        for row in rows:
            volume_mm3 = row["voxels"] * mask.voxel_volume_mm3
            if volume_mm3 < min_volume_mm3:
                continue
            lesions.append(
                ReviewedLesion(
                    id=0,
                    segment_id=segment_id,
                    segment=segmentation.GetSegment(segment_id).GetName(),
                    centroid_ras_mm=[float(v) for v in row["centroid_ras_mm"]],
                    volume_mm3=float(volume_mm3),
                    voxels=int(row["voxels"]),
                    seed_kji=seeds[row["label"]],
                )
            )
    match_confidence(
        lesions, uncertainty_rows(segmentation_node), segmentation_node, float(np.linalg.norm(grid.spacing))
    )
    lesions.sort(key=lambda x: (-x.voxels, segment_ids.index(x.segment_id), x.centroid_ras_mm))
    for number, lesion in enumerate(lesions, start=1):
        lesion.id = number
    review = Review(volume_node.GetID() or "", segment_ids, lesions, float(min_volume_mm3), _now())
    review.segment_voxels = _segment_voxels(segmentation_node, grid)
    _save(segmentation_node, review)
    setattr(segmentation_node, _UNDO_STACK, [])
    return review


# --- stepping ---------------------------------------------------------------------------------------


def review_order(review: Review) -> list[ReviewedLesion]:
    """The lesions in stepping order: least confident first, those without confidence after; larger first."""
    return sorted(
        review.lesions,
        key=lambda x: (x.confidence is None, x.confidence if x.confidence is not None else 0.0, -x.volume_mm3, x.id),
    )


def _step(review: Review, current_id: int | None, by: int) -> ReviewedLesion | None:
    order = review_order(review)
    if not order:
        return None
    if current_id is None:
        return order[0] if by > 0 else order[-1]
    ids = [x.id for x in order]
    if current_id not in ids:
        raise ValueError(f"the review has no lesion {current_id}")
    return order[(ids.index(current_id) + by) % len(order)]


def next_lesion(review: Review, current_id: int | None = None) -> ReviewedLesion | None:
    """The lesion after ``current_id`` in :func:`review_order` (the first when None), wrapping round at the end;
    None when the review lists no lesion."""
    return _step(review, current_id, 1)


def previous_lesion(review: Review, current_id: int | None = None) -> ReviewedLesion | None:
    """The lesion before ``current_id`` in :func:`review_order` (the last when None), wrapping round."""
    return _step(review, current_id, -1)


# --- decisions and undo -----------------------------------------------------------------------------


@dataclass
class _Decision:
    lesion_id: int
    status: str
    reviewer: str
    time: str
    removed_kji: np.ndarray | None = None  # the voxels a reject took out of the segment


# The undo stack is a Python attribute of the node: VTK keeps a wrapper's attributes for as long as the
# node lives (even when no Python name refers to it), drops them with the node, and never saves them.
_UNDO_STACK = "_lesionseg_review_undo"


def _undo_stack(segmentation_node: Any) -> list[_Decision]:
    stack = getattr(segmentation_node, _UNDO_STACK, None)
    if stack is None:
        stack = []
        setattr(segmentation_node, _UNDO_STACK, stack)
    return stack


def status_text(review: Review, lesion: ReviewedLesion | None) -> str:
    """The review panel's line: the lesion under review, then how many are accepted, rejected and left."""
    counts = review.counts()
    tally = (
        f"{counts[ACCEPTED]} accepted, {counts[REJECTED]} rejected, {counts[UNREVIEWED]} to review "
        f"of {len(review.lesions)}"
    )
    if lesion is None:
        return f"No lesion to review. {tally}." if not review.lesions else f"{tally}."
    order = [x.id for x in review_order(review)]
    confidence = (
        "no confidence (run with uncertainty)" if lesion.confidence is None else (f"confidence {lesion.confidence:.2f}")
    )
    who = f" by {lesion.reviewer}" if lesion.reviewer else ""
    return (
        f"Lesion {order.index(lesion.id) + 1} of {len(order)} ({lesion.segment}, {lesion.volume_mm3 / 1000:.2f} mL, "
        f"{confidence}): {lesion.status}{who}. {tally}."
    )


def can_undo(segmentation_node: Any) -> bool:
    """Whether :func:`undo` has a decision to take back on this node (in this session)."""
    return bool(getattr(segmentation_node, _UNDO_STACK, None))


def _reviewer(reviewer: str) -> str:
    if not reviewer or not reviewer.strip():
        raise ValueError("enter the reviewer's name: every accepted or rejected lesion records who decided")
    return reviewer.strip()


def _volume_grid(segmentation_node: Any, review: Review, volume_node: Any | None) -> Image:
    if volume_node is None and review.volume_id:
        volume_node = segmentation_node.GetScene().GetNodeByID(review.volume_id)
    if volume_node is None:
        raise ValueError("the volume the review was started on is no longer in the scene; start the review again")
    return lesionseg.mrml.image_from_volume_node(volume_node)


def _decide(lesion: ReviewedLesion, status: str, reviewer: str) -> _Decision:
    """Set the lesion's status; returns what undoing it restores."""
    before = _Decision(lesion.id, lesion.status, lesion.reviewer, lesion.time)
    lesion.status, lesion.reviewer, lesion.time = status, reviewer, _now()
    return before


def accept(segmentation_node: Any, lesion_id: int, reviewer: str) -> ReviewedLesion:
    """Accept a lesion: it is kept, and locked against rejection until the acceptance is undone."""
    reviewer = _reviewer(reviewer)
    review = saved_review(segmentation_node)
    lesion = review.lesion(lesion_id)
    if lesion.status == ACCEPTED:
        raise ValueError(f"lesion {lesion_id} is already accepted (by {lesion.reviewer}, {lesion.time})")
    if lesion.status == REJECTED:
        raise ValueError(f"lesion {lesion_id} was rejected and its voxels removed; Undo the rejection to accept it")
    before = _decide(lesion, ACCEPTED, reviewer)
    _save(segmentation_node, review)
    _undo_stack(segmentation_node).append(before)
    return lesion


def _component_voxels(mask: Image, lesion: ReviewedLesion) -> np.ndarray:
    components, _ = connected_components(mask.array != 0, mask.spacing)
    number = components[tuple(lesion.seed_kji)]
    if number == 0:
        raise ValueError(
            f"lesion {lesion.id} of {lesion.segment!r} is no longer where the review found it (the segment was "
            "edited); start the review again"
        )
    return np.argwhere(components == number)


def reject(segmentation_node: Any, lesion_id: int, reviewer: str, volume_node: Any | None = None) -> ReviewedLesion:
    """Reject a lesion: its connected voxels are removed from its segment; other lesions stay as they are.

    ``volume_node`` defaults to the volume the review was started on.
    """
    reviewer = _reviewer(reviewer)
    review = saved_review(segmentation_node)
    lesion = review.lesion(lesion_id)
    if lesion.status == ACCEPTED:
        raise ValueError(
            f"lesion {lesion_id} was accepted by {lesion.reviewer} and is locked; Undo the acceptance to reject it"
        )
    if lesion.status == REJECTED:
        raise ValueError(f"lesion {lesion_id} is already rejected (by {lesion.reviewer}, {lesion.time})")
    mask = _segment_mask(segmentation_node, lesion.segment_id, _volume_grid(segmentation_node, review, volume_node))
    removed = _component_voxels(mask, lesion)
    kept = mask.array.copy()
    kept[tuple(removed.T)] = 0
    lesionseg.mrml.update_segment_from_mask(segmentation_node, lesion.segment_id, mask.with_array(kept))
    before = _decide(lesion, REJECTED, reviewer)
    before.removed_kji = removed
    _save(segmentation_node, review)
    _undo_stack(segmentation_node).append(before)
    return lesion


def undo(segmentation_node: Any, volume_node: Any | None = None) -> ReviewedLesion:
    """Take back the last accept or reject on the node: the lesion's earlier status returns, and a rejected
    lesion's voxels go back into its segment exactly. Returns the lesion."""
    stack = getattr(segmentation_node, _UNDO_STACK, None)
    if not stack:
        raise ValueError(
            "there is no lesion decision to undo in this session (the undo history is not saved with the scene)"
        )
    review = saved_review(segmentation_node)
    last = stack[-1]
    lesion = review.lesion(last.lesion_id)
    if last.removed_kji is not None:
        grid = _volume_grid(segmentation_node, review, volume_node)
        mask = _segment_mask(segmentation_node, lesion.segment_id, grid)
        restored = mask.array.copy()
        restored[tuple(last.removed_kji.T)] = 1
        lesionseg.mrml.update_segment_from_mask(segmentation_node, lesion.segment_id, mask.with_array(restored))
    stack.pop()
    lesion.status, lesion.reviewer, lesion.time = last.status, last.reviewer, last.time
    _save(segmentation_node, review)
    return lesion


# --- what the review keeps --------------------------------------------------------------------------


def accepted_labelmap(segmentation_node: Any, volume_node: Any) -> tuple[Image, list[LabelInfo]]:
    """The node's labelmap on the volume's grid (as the bridge exports it) with, in the lesion segments, only
    the accepted lesions; the other segments are unchanged."""
    review = saved_review(segmentation_node)
    labels, infos = lesionseg.mrml.labelmap_from_segmentation_node(segmentation_node, volume_node)
    keep = _accepted_masks(segmentation_node, review, labels)
    array = labels.array.copy()
    value_of = {
        segment_id: info.value for (segment_id, _), info in zip(_segments(segmentation_node), infos, strict=True)
    }
    for segment_id, mask in keep.items():
        array[(array == value_of[segment_id]) & ~mask] = 0
    return labels.with_array(array), infos


def _segments(segmentation_node: Any) -> list[tuple[str, LabelInfo]]:
    return lesionseg.mrml.segment_labels(segmentation_node)


def _accepted_masks(segmentation_node: Any, review: Review, grid: Image) -> dict[str, np.ndarray]:
    """Per lesion segment: the voxels of its accepted lesions."""
    accepted: dict[str, list[ReviewedLesion]] = {}
    for lesion in review.lesions:
        if lesion.status == ACCEPTED:
            accepted.setdefault(lesion.segment_id, []).append(lesion)
    present = {segment_id for segment_id, _ in _segments(segmentation_node)}
    out = {}
    for segment_id in review.lesion_segments:
        if segment_id not in present:
            continue
        keep = np.zeros(grid.array.shape, bool)
        if accepted.get(segment_id):
            mask = _segment_mask(segmentation_node, segment_id, grid)
            for lesion in accepted[segment_id]:
                keep[tuple(_component_voxels(mask, lesion).T)] = True
        out[segment_id] = keep
    return out


def accepted_segmentation_node(segmentation_node: Any, volume_node: Any, name: str | None = None) -> Any:
    """A new segmentation node in the same scene: a copy of this one (names, colours, terminology kept) whose
    lesion segments hold only the accepted lesions. The caller removes it when done with it."""
    review = saved_review(segmentation_node)
    scene = segmentation_node.GetScene()
    copy = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or segmentation_node.GetName())
    copy.GetSegmentation().DeepCopy(segmentation_node.GetSegmentation())
    copy.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    grid = lesionseg.mrml.image_from_volume_node(volume_node)
    for segment_id, keep in _accepted_masks(segmentation_node, review, grid).items():
        lesionseg.mrml.update_segment_from_mask(copy, segment_id, grid.with_array(keep.astype(np.uint8)))
    return copy


def _lesion_record(lesion: ReviewedLesion) -> dict[str, Any]:
    return {
        "id": lesion.id,
        "segment": lesion.segment,
        "volume_mm3": round(lesion.volume_mm3, 3),
        "centroid_ras_mm": [round(v, 3) for v in lesion.centroid_ras_mm],
        "confidence": lesion.confidence,
        "reviewer": lesion.reviewer,
        "time": lesion.time,
    }


def review_provenance(segmentation_node: Any, volume_node: Any | None = None) -> dict[str, Any] | None:
    """What a saved training case records of the review: the accepted and the rejected lesions, the count of
    each status, and (given the ``volume_node`` the case is saved on) the edits made besides the review; None
    when the node holds no review."""
    review = review_of(segmentation_node)
    if review is None:
        return None
    out: dict[str, Any] = {
        "started": review.started,
        "counts": review.counts(),
        "accepted": [_lesion_record(x) for x in review.lesions if x.status == ACCEPTED],
        "rejected": [_lesion_record(x) for x in review.lesions if x.status == REJECTED],
    }
    if volume_node is not None and review.segment_voxels:
        out["edits"] = review_edits(segmentation_node, volume_node, review)
    return out


def accepted_rows(segmentation_node: Any, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lesion-table rows a report of accepted lesions only keeps: accepted lesions, and the rows of segments
    that are not under review (organs); refuses a node whose review was never started."""
    review = saved_review(segmentation_node)
    segmentation = segmentation_node.GetSegmentation()
    reviewed = {segmentation.GetSegment(x).GetName() for x in review.lesion_segments if segmentation.GetSegment(x)}
    return [dict(row) for row in rows if row.get("segment") not in reviewed or row.get("status") == ACCEPTED]


def review_edits(segmentation_node: Any, volume_node: Any, review: Review) -> list[dict[str, Any]]:
    """Per segment: its voxels when the review started, those the review rejected, those it has now, and the net
    change that neither explains (the annotator's own edits: painted in, erased, or a segment added)."""
    segmentation = segmentation_node.GetSegmentation()
    now = _segment_voxels(segmentation_node, volume_node)
    rejected: dict[str, int] = {}
    for lesion in review.lesions:
        if lesion.status == REJECTED:
            rejected[lesion.segment_id] = rejected.get(lesion.segment_id, 0) + lesion.voxels
    rows = []
    for segment_id in sorted(set(now) | set(review.segment_voxels)):
        segment = segmentation.GetSegment(segment_id)
        start, gone, saved = (
            review.segment_voxels.get(segment_id, 0),
            rejected.get(segment_id, 0),
            now.get(segment_id, 0),
        )
        rows.append(
            {
                "segment": segment.GetName() if segment is not None else segment_id,
                "voxels_at_review": start,
                "voxels_rejected": gone,
                "voxels_saved": saved,
                "net_edit_voxels": saved - (start - gone),
            }
        )
    return rows


def row_review_fields(segmentation_node: Any, rows: Sequence[dict[str, Any]], voxel_mm: float) -> None:
    """Fill ``confidence``, ``status`` and ``reviewer`` of lesion-table rows (``segment``, ``centroid_r/a/s``):
    from the node's review where it lists the lesion (same segment, centre within ``voxel_mm``), else
    confidence from the uncertainty rows and no status."""
    review = review_of(segmentation_node)
    reviewed = review.lesions if review is not None else []
    for row in rows:
        centre = [row["centroid_r"], row["centroid_a"], row["centroid_s"]]
        near = sorted((_distance(x.centroid_ras_mm, centre), x.id, x) for x in reviewed if x.segment == row["segment"])
        lesion = near[0][2] if near and near[0][0] <= voxel_mm else None
        row["status"] = lesion.status if lesion is not None else ""
        row["reviewer"] = lesion.reviewer if lesion is not None else ""
        row["confidence"] = lesion.confidence if lesion is not None else None
    if review is None:
        segmentation = segmentation_node.GetSegmentation()
        probes = [
            ReviewedLesion(
                0,
                segmentation.GetSegmentIdBySegmentName(row["segment"]) or "",
                row["segment"],
                [row["centroid_r"], row["centroid_a"], row["centroid_s"]],
                0.0,
                0,
                [],
            )
            for row in rows
        ]
        match_confidence(probes, uncertainty_rows(segmentation_node), segmentation_node, voxel_mm)
        for row, probe in zip(rows, probes, strict=True):
            row["confidence"] = probe.confidence
