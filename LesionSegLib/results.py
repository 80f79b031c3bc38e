"""Logic that SpleenSeg and ProstateMetSeg share for a finished segmentation: compare, list lesions, export.

A mixin for the modules' ``ScriptedLoadableModuleLogic`` classes. It is Qt-free: every method takes the
nodes it works on, and the two look-ups that only exist in Slicer's app (is SlicerRT there, where is a
DICOM instance's file) are arguments that default to the app's answers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from LesionSegLib import comparison, export, lesions, review

_FROM_APP: Any = object()  # marks "ask Slicer's app" for arguments whose real value needs the app


def _written(
    node: Any, rows: list[dict[str, Any]], csvPath: str | Path | None, write: Callable[[str | Path, list], None]
) -> tuple[Any, list[dict[str, Any]]]:
    """A table node and its rows, the rows also written to ``csvPath`` when one is given."""
    if csvPath:
        write(csvPath, rows)
    return node, rows


class SegmentationResultsLogic:
    """compare, lesion table and export; each method is usable without the widget."""

    def compareWithReference(
        self,
        segmentationNode: Any,
        referenceNode: Any,
        mapping: Mapping[str, str] | None = None,
        geometry: Any | None = None,
        tableNode: Any | None = None,
        csvPath: str | Path | None = None,
    ) -> tuple[Any, list[dict[str, Any]]]:
        """Metrics per mapped segment pair in a table node (new, or ``tableNode`` refilled), and CSV if asked.

        ``mapping`` pairs segment names with reference segment names; None pairs equal names.
        """
        rows = comparison.compare_segmentations(segmentationNode, referenceNode, mapping, geometry)
        name = f"{segmentationNode.GetName()} vs {referenceNode.GetName()}"
        node = comparison.comparison_table(segmentationNode.GetScene(), rows, name, tableNode)
        return _written(node, rows, csvPath, comparison.write_comparison_csv)

    def lesionTable(
        self,
        segmentationNode: Any,
        volumeNode: Any,
        minVolumeMm3: float,
        tableNode: Any | None = None,
        csvPath: str | Path | None = None,
    ) -> tuple[Any, list[dict[str, Any]]]:
        """One row per lesion of at least ``minVolumeMm3`` in a table node, and CSV if asked.

        The minimum filters the table only: the segmentation keeps every lesion, and the table node records
        the minimum and how many smaller lesions it leaves out (``lesions.LEFT_OUT_ATTRIBUTE``).
        """
        rows, leftOut = lesions.listed_lesion_rows(segmentationNode, volumeNode, minVolumeMm3)
        node = lesions.lesion_table_node(
            segmentationNode.GetScene(), rows, f"{segmentationNode.GetName()} lesions", tableNode, minVolumeMm3, leftOut
        )
        return _written(node, rows, csvPath, lesions.write_lesion_csv)

    # --- lesion review (LesionSegLib.review); the review is saved on the segmentation node ---

    def startLesionReview(
        self, segmentationNode: Any, volumeNode: Any, minVolumeMm3: float = 0.0, restart: bool = False
    ) -> review.Review:
        """The node's lesion review: the one it holds, or a new one (also with ``restart``)."""
        return review.start_review(segmentationNode, volumeNode, minVolumeMm3, restart)

    def acceptLesion(self, segmentationNode: Any, lesionId: int, reviewer: str) -> review.ReviewedLesion:
        return review.accept(segmentationNode, lesionId, reviewer)

    def rejectLesion(
        self, segmentationNode: Any, lesionId: int, reviewer: str, volumeNode: Any | None = None
    ) -> review.ReviewedLesion:
        """Reject the lesion and remove its voxels from the segmentation."""
        return review.reject(segmentationNode, lesionId, reviewer, volumeNode)

    def undoLesionReview(self, segmentationNode: Any, volumeNode: Any | None = None) -> review.ReviewedLesion:
        """Take back the last accept or reject of this session; returns the lesion it concerned."""
        return review.undo(segmentationNode, volumeNode)

    def nextLesion(self, segmentationNode: Any, currentId: int | None = None) -> review.ReviewedLesion | None:
        """The lesion to jump to after ``currentId``, least confident first (its ``centroid_ras_mm``)."""
        return review.next_lesion(review.saved_review(segmentationNode), currentId)

    def previousLesion(self, segmentationNode: Any, currentId: int | None = None) -> review.ReviewedLesion | None:
        return review.previous_lesion(review.saved_review(segmentationNode), currentId)

    def planExport(
        self,
        volumeNode: Any,
        segmentationNode: Any,
        format: str,
        slicerrtAvailable: bool | None = None,
        fileForInstance: Callable[[str], str] | None = _FROM_APP,
    ) -> export.ExportPlan:
        """How ``segmentationNode`` can be exported as ``format``, or what is missing."""
        if slicerrtAvailable is None or fileForInstance is _FROM_APP:
            from LesionSegLib import dicomapp

            if slicerrtAvailable is None:
                slicerrtAvailable = dicomapp.slicerrt_available()
            if fileForInstance is _FROM_APP:
                fileForInstance = dicomapp.file_for_instance_lookup()
        return export.plan_export(volumeNode, segmentationNode, format, slicerrtAvailable, fileForInstance)

    def exportSegmentation(
        self,
        plan: export.ExportPlan,
        volumeNode: Any,
        segmentationNode: Any,
        folder: str | Path | None,
        intoDatabase: bool,
        say: Callable[[str], None] = print,
        acceptedOnly: bool = False,
    ) -> list[Path]:
        """Carry out ``plan``: files into ``folder``, then into Slicer's DICOM database when asked.

        With ``acceptedOnly`` the lesion segments carry only the lesions accepted in the node's review.
        """
        if not plan.possible:
            raise ValueError(plan.problem)
        if plan.route in (export.ROUTE_SLICERRT,) or intoDatabase:
            from LesionSegLib import dicomapp

            with export.exported_node(segmentationNode, volumeNode, acceptedOnly) as node:
                return dicomapp.run_export(plan, node.GetScene(), volumeNode, node, folder, intoDatabase, say)
        if not folder:
            raise ValueError("choose the folder to export into")
        written = export.export_with_engine(
            plan, segmentationNode, volumeNode, folder, say=say, accepted_only=acceptedOnly
        )
        say(f"Wrote {written}")
        return [written]

    def compareReadiness(self, parameterNode: Any) -> tuple[bool, str]:
        """Whether Compare can run now, and the tooltip that says why or why not."""
        if parameterNode is None or not parameterNode.outputSegmentation or not parameterNode.referenceSegmentation:
            return False, "Select the output segmentation and a reference segmentation."
        if parameterNode.outputSegmentation == parameterNode.referenceSegmentation:
            return False, "The reference must be a different segmentation from the output."
        return True, "Compare the output segmentation with the reference segmentation."

    def exportReadiness(self, parameterNode: Any) -> tuple[bool, str]:
        """Whether Export can run now, and the tooltip that says why or why not."""
        if parameterNode is None or not parameterNode.outputSegmentation:
            return False, "Select the segmentation to export."
        return True, f"Export the output segmentation as {parameterNode.exportFormat}."

    def lesionReportRows(self, segmentationNode: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The lesion-table rows of a report of accepted lesions only (other segments' rows kept)."""
        return review.accepted_rows(segmentationNode, rows)

    def reviewStatus(self, segmentationNode: Any, lesion: review.ReviewedLesion | None) -> str:
        """The review panel's line for the lesion under review (or the tally when there is none)."""
        return review.status_text(review.saved_review(segmentationNode), lesion)

    def reviewReadiness(self, parameterNode: Any, lesion: review.ReviewedLesion | None) -> dict[str, tuple[bool, str]]:
        """Whether each review action can run now, and the tooltip that says why or why not: ``start``,
        ``step`` (Previous and Next), ``decide`` (Accept and Reject) and ``undo``."""
        if parameterNode is None or not parameterNode.outputSegmentation or not parameterNode.inputVolume:
            off = (False, "Select the input volume and the output segmentation.")
            return {"start": off, "step": off, "decide": off, "undo": off}
        started = review.review_of(parameterNode.outputSegmentation) is not None
        start = (True, "Continue the review." if started else "Review the lesions, least confident first.")
        step = (lesion is not None, "Go to another lesion." if lesion is not None else "Start the review first.")
        if lesion is None:
            decide = (False, "Start the review first.")
        elif not getattr(parameterNode, "reviewer", "").strip():
            decide = (False, "Enter the reviewer's name: each decision records who made it.")
        else:
            decide = (True, "Accept (keep) or reject (remove) this lesion.")
        undoable = review.can_undo(parameterNode.outputSegmentation)
        undo = (undoable, "Take back the last decision." if undoable else "Nothing to undo in this session.")
        return {"start": start, "step": step, "decide": decide, "undo": undo}

    def lesionTableReadiness(self, parameterNode: Any) -> tuple[bool, str]:
        """Whether List lesions can run now, and the tooltip that says why or why not."""
        if parameterNode is None or not parameterNode.outputSegmentation or not parameterNode.inputVolume:
            return False, "Select the input volume and the output segmentation."
        return True, "List the lesions of the output segmentation."
