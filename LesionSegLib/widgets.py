"""The thin Qt parts SpleenSeg and ProstateMetSeg share: sections of their panels that look and work alike.

Each panel class takes the module's ``ui`` (from ``slicer.util.childWidgetVariables``), finds its widgets
by the object names both ``.ui`` files use, and calls the module logic for everything it computes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import qt
import slicer
from slicer.i18n import tr as _

from lesionseg.jobs import JobState
from LesionSegLib import channels, comparison, export, lesions, segmenting


def showTableInLayout(tableNode: Any) -> None:
    """Switch to a layout with a table view and show ``tableNode`` there."""
    layoutManager = slicer.app.layoutManager()
    if layoutManager is None:  # no main window (e.g. --no-main-window self-tests)
        return
    layoutManager.setLayout(slicer.modules.tables.logic().GetLayoutWithTable(layoutManager.layout))
    applicationLogic = slicer.app.applicationLogic()
    applicationLogic.GetSelectionNode().SetActiveTableID(tableNode.GetID())
    applicationLogic.PropagateTableSelection()


def showPlotInLayout(chartNode: Any) -> None:
    """Switch to a layout with a plot view and show ``chartNode`` there."""
    layoutManager = slicer.app.layoutManager()
    if layoutManager is None:  # no main window (e.g. --no-main-window self-tests)
        return
    layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotView)
    applicationLogic = slicer.app.applicationLogic()
    applicationLogic.GetSelectionNode().SetActivePlotChartID(chartNode.GetID())
    applicationLogic.PropagatePlotChartSelection()


def appendLog(textEdit: Any, message: str) -> None:
    textEdit.appendPlainText(message)
    textEdit.ensureCursorVisible()


def chooseCsvPath(parent: Any, suggestedName: str) -> str:
    """Ask where to save a CSV; empty when the user cancels."""
    path = qt.QFileDialog.getSaveFileName(parent, _("Save CSV"), suggestedName, _("CSV files (*.csv)"))
    if path and not path.lower().endswith(".csv"):
        path += ".csv"
    return path


def tableViewRow(tableView: Any, index: Any) -> int:
    """The table node row behind a (possibly sorted) view index."""
    source = tableView.sortFilterProxyModel().mapToSource(index)
    model = tableView.tableModel()
    return model.mrmlTableRowIndex(source) if hasattr(model, "mrmlTableRowIndex") else source.row()


class SegmentMappingEditor:
    """A two-column QTableWidget: each segment, and the segment (or label) it is paired with."""

    NOT_COMPARED = "—"

    def __init__(self, tableWidget: Any, targetTitle: str = "") -> None:
        self.tableWidget = tableWidget
        self.tableWidget.setColumnCount(2)
        self.tableWidget.setHorizontalHeaderLabels([_("Segment"), targetTitle or _("Reference segment")])
        self.tableWidget.horizontalHeader().setStretchLastSection(True)
        self.combos: list[Any] = []

    def fill(self, names: list[str], referenceNames: list[str]) -> None:
        """One row per segment, preset to the reference segment of the same name."""
        mapping = comparison.default_segment_mapping(names, referenceNames)
        self.tableWidget.setRowCount(len(names))
        self.combos = []
        for row, name in enumerate(names):
            item = qt.QTableWidgetItem(name)
            item.setFlags(qt.Qt.ItemIsEnabled)
            self.tableWidget.setItem(row, 0, item)
            combo = qt.QComboBox()
            combo.addItem(self.NOT_COMPARED)
            for referenceName in referenceNames:
                combo.addItem(referenceName)
            combo.setCurrentIndex(max(combo.findText(mapping.get(name, self.NOT_COMPARED)), 0))
            self.tableWidget.setCellWidget(row, 1, combo)
            self.combos.append(combo)

    def mapping(self) -> dict[str, str]:
        out = {}
        for row, combo in enumerate(self.combos):
            if combo.currentText != self.NOT_COMPARED:
                out[self.tableWidget.item(row, 0).text()] = combo.currentText
        return out


class CsvTablePanel:
    """A section whose rows fill a table and are saved as CSV by ``saveButton`` (enabled once rows are listed).

    A subclass names the file (``csvName``) and writes its rows (``writeCsv``).
    """

    csvName = ""

    def __init__(self, ui: Any, logic: Any, parameterNode: Callable[[], Any], saveButton: Any) -> None:
        self.ui, self.logic, self.parameterNode = ui, logic, parameterNode
        self.rows: list[dict] = []
        saveButton.connect("clicked(bool)", self.onSaveCsv)
        saveButton.enabled = False

    def writeCsv(self, path: str) -> None:
        raise NotImplementedError

    def onSaveCsv(self, _checked: bool = False) -> None:
        path = chooseCsvPath(slicer.util.mainWindow(), self.csvName)
        if path:
            with slicer.util.tryWithErrorDisplay(_("Could not save the CSV."), waitCursor=True):
                self.writeCsv(path)


class ComparisonPanel(CsvTablePanel):
    """The "Compare with reference" section: mapping table, Compare, results table, Save CSV."""

    csvName = "comparison.csv"

    def __init__(self, ui: Any, logic: Any, parameterNode: Callable[[], Any]) -> None:
        super().__init__(ui, logic, parameterNode, ui.saveComparisonCsvButton)
        self.mappingEditor = SegmentMappingEditor(ui.segmentMappingTableWidget)
        ui.compareButton.connect("clicked(bool)", self.onCompare)
        ui.outputSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.refreshMapping)
        ui.referenceSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.refreshMapping)

    def refreshMapping(self, _node: Any = None) -> None:
        # Read the selectors: their change signal comes before the parameter node is updated.
        output = self.ui.outputSegmentationSelector.currentNode()
        reference = self.ui.referenceSegmentationSelector.currentNode()
        if output is None or reference is None:
            self.mappingEditor.fill([], [])
            return
        self.mappingEditor.fill(comparison.segment_names(output), comparison.segment_names(reference))

    def onCompare(self, _checked: bool = False) -> None:
        node = self.parameterNode()
        with slicer.util.tryWithErrorDisplay(_("Comparison failed."), waitCursor=True):
            tableNode, self.rows = self.logic.compareWithReference(
                node.outputSegmentation,
                node.referenceSegmentation,
                self.mappingEditor.mapping(),
                node.inputVolume,
                node.comparisonTable,
            )
            node.comparisonTable = tableNode
            self.ui.comparisonTableView.setMRMLTableNode(tableNode)
            self.ui.saveComparisonCsvButton.enabled = True
            showTableInLayout(tableNode)

    def writeCsv(self, path: str) -> None:
        comparison.write_comparison_csv(path, self.rows)


class ExportPanel:
    """The "Export" section: format, destination (DICOM database or folder), Export, and what happened."""

    def __init__(self, ui: Any, logic: Any, parameterNode: Callable[[], Any], log: Callable[[str], None]) -> None:
        self.ui, self.logic, self.parameterNode, self.log = ui, logic, parameterNode, log
        ui.exportButton.connect("clicked(bool)", self.onExport)
        ui.exportFormatComboBox.connect("currentIndexChanged(int)", self.updateStatus)
        ui.outputSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateStatus)
        ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateStatus)

    def plan(self) -> export.ExportPlan | None:
        # Read the widgets: their change signals come before the parameter node is updated.
        segmentation = self.ui.outputSegmentationSelector.currentNode()
        if segmentation is None:
            return None
        volume = self.ui.inputVolumeSelector.currentNode()
        return self.logic.planExport(volume, segmentation, self.ui.exportFormatComboBox.currentText)

    def updateStatus(self, *_args: Any) -> None:
        try:
            plan = self.plan()
        except ValueError as error:
            self.ui.exportStatusLabel.text = str(error)
            return
        if plan is None:
            self.ui.exportStatusLabel.text = _("Select the segmentation to export.")
        elif not plan.possible:
            self.ui.exportStatusLabel.text = plan.problem
        else:
            self.ui.exportStatusLabel.text = {
                export.ROUTE_SLICERRT: _(
                    "RTSTRUCT through SlicerRT. This CT has no DICOM series, so SlicerRT also writes it as a new "
                    "CT series (new UIDs), with the patient and study of the Data module's subject hierarchy."
                ),
                export.ROUTE_ENGINE_RTSTRUCT: _(
                    "RTSTRUCT on the CT's DICOM series: it references the original slices and keeps their patient "
                    "and study."
                ),
                export.ROUTE_ENGINE_DICOMSEG: _(
                    "DICOM SEG on the CT's DICOM series: it references the original slices and keeps their patient "
                    "and study."
                ),
                export.ROUTE_SEG_NRRD: _("Segmentation file (.seg.nrrd) in the chosen folder."),
            }[plan.route]

    def onExport(self, _checked: bool = False) -> None:
        node = self.parameterNode()
        try:
            plan = self.plan()
        except ValueError as error:  # e.g. a segmentation without segments
            slicer.util.errorDisplay(str(error), windowTitle=_("Cannot export"))
            return
        if plan is not None and not plan.possible and export.SEG_NRRD in plan.alternatives:
            if not slicer.util.confirmOkCancelDisplay(
                plan.problem + "\n\n" + _("Save the segmentation as a .seg.nrrd file in the chosen folder instead?"),
                _("Export"),
            ):
                return
            plan = self.logic.planExport(node.inputVolume, node.outputSegmentation, export.SEG_NRRD)
        intoDatabase = self.ui.exportDestinationComboBox.currentText == _("DICOM database")
        folder = self.ui.exportFolderPathLineEdit.currentPath
        if plan is not None and (plan.route == export.ROUTE_SEG_NRRD or not intoDatabase) and not folder:
            slicer.util.errorDisplay(_("Choose the folder to export into."))
            return
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            # ProstateMetSeg's "Accepted lesions only" (the lesion review); SpleenSeg has no such field.
            acceptedOnly = bool(getattr(node, "exportAcceptedOnly", False))
            written = self.logic.exportSegmentation(
                plan, node.inputVolume, node.outputSegmentation, folder, intoDatabase, self.log, acceptedOnly
            )
            self.ui.exportStatusLabel.text = _("Exported: {files}").format(files=", ".join(p.name for p in written))


class LesionReviewPanel:
    """Lesion by lesion, least confident first: the slice views jump to each; Accept, Reject and Undo (keys A, R,
    U) and Previous and Next (P, N) work while the module panel has the keyboard focus. The review itself lives on
    the segmentation node (LesionSegLib.review); ``onChanged`` relists the lesion table after a decision."""

    KEYS = (("P", "onPrevious"), ("N", "onNext"), ("A", "onAccept"), ("R", "onReject"), ("U", "onUndo"))

    def __init__(
        self, ui: Any, logic: Any, parameterNode: Callable[[], Any], panel: Any, onChanged: Callable[[], None]
    ) -> None:
        self.ui, self.logic, self.parameterNode, self.onChanged = ui, logic, parameterNode, onChanged
        self.current = None  # the lesion under review (a review.ReviewedLesion)
        self.segmentation = None  # the node the current lesion belongs to
        ui.startReviewButton.connect("clicked(bool)", self.onStart)
        ui.previousLesionButton.connect("clicked(bool)", self.onPrevious)
        ui.nextLesionButton.connect("clicked(bool)", self.onNext)
        ui.acceptLesionButton.connect("clicked(bool)", self.onAccept)
        ui.rejectLesionButton.connect("clicked(bool)", self.onReject)
        ui.undoReviewButton.connect("clicked(bool)", self.onUndo)
        self.shortcuts = []
        for key, slot in self.KEYS:
            shortcut = qt.QShortcut(qt.QKeySequence(key), panel)
            # Only within the module panel: in the slice views these keys are Slicer's own.
            shortcut.setContext(qt.Qt.WidgetWithChildrenShortcut)
            shortcut.connect("activated()", getattr(self, slot))
            self.shortcuts.append(shortcut)

    def buttonStates(self) -> list[tuple[Any, tuple[bool, str]]]:
        node = self.parameterNode()
        if node is not None and node.outputSegmentation is not self.segmentation:
            self.current, self.segmentation = None, None  # another result: its own review, from the start
        ready = self.logic.reviewReadiness(node, self.current)
        ui = self.ui
        return [
            (ui.startReviewButton, ready["start"]),
            (ui.previousLesionButton, ready["step"]),
            (ui.nextLesionButton, ready["step"]),
            (ui.acceptLesionButton, ready["decide"]),
            (ui.rejectLesionButton, ready["decide"]),
            (ui.undoReviewButton, ready["undo"]),
        ]

    def show(self, lesion: Any) -> None:
        node = self.parameterNode()
        self.current, self.segmentation = lesion, node.outputSegmentation
        if lesion is not None:
            lesions.jump_to_lesion(slicer.mrmlScene, lesion.centroid_ras_mm)
        self.ui.reviewStatusLabel.text = self.logic.reviewStatus(node.outputSegmentation, lesion)
        self.onChanged()

    def _act(self, action: Callable[[Any], Any]) -> None:
        node = self.parameterNode()
        if node is None or not node.outputSegmentation:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not review the lesion."), waitCursor=True):
            self.show(action(node))

    def onStart(self, _checked: bool = False) -> None:
        def start(node: Any) -> Any:
            self.logic.startLesionReview(node.outputSegmentation, node.inputVolume, node.minLesionVolumeMm3)
            return self.logic.nextLesion(node.outputSegmentation, None)

        self._act(start)

    def _step(self, forward: bool) -> None:
        if self.current is None:
            return
        step = self.logic.nextLesion if forward else self.logic.previousLesion
        self._act(lambda node: step(node.outputSegmentation, self.current.id))

    def onPrevious(self, _checked: bool = False) -> None:
        self._step(False)

    def onNext(self, _checked: bool = False) -> None:
        self._step(True)

    def _decide(self, decision: Callable[[Any, int], Any]) -> None:
        if self.current is None:
            return
        lesion_id = self.current.id

        def decide(node: Any) -> Any:
            decision(node, lesion_id)
            return self.logic.nextLesion(node.outputSegmentation, lesion_id)

        self._act(decide)

    def onAccept(self, _checked: bool = False) -> None:
        self._decide(lambda node, lesion_id: self.logic.acceptLesion(node.outputSegmentation, lesion_id, node.reviewer))

    def onReject(self, _checked: bool = False) -> None:
        self._decide(lambda node, lesion_id: self.logic.rejectLesion(node.outputSegmentation, lesion_id, node.reviewer,
                                                                     node.inputVolume))  # fmt: skip

    def onUndo(self, _checked: bool = False) -> None:
        self._act(lambda node: self.logic.undoLesionReview(node.outputSegmentation, node.inputVolume))


class LesionTablePanel(CsvTablePanel):
    """The lesion table: rows from the logic; clicking a row centres the slice views on that lesion."""

    csvName = "lesions.csv"

    def __init__(self, ui: Any, logic: Any, parameterNode: Callable[[], Any]) -> None:
        super().__init__(ui, logic, parameterNode, ui.saveLesionCsvButton)
        ui.lesionTableButton.connect("clicked(bool)", self.onLesionTable)
        ui.lesionTableView.connect("clicked(QModelIndex)", self.onRowClicked)
        ui.minLesionVolumeSpinBox.connect("valueChanged(int)", self.onMinimumChanged)

    def update(self, minimumMm3: float | None = None) -> None:
        """List the lesions of at least ``minimumMm3`` (default: the parameter node's minimum) in the table."""
        node = self.parameterNode()
        minimum = node.minLesionVolumeMm3 if minimumMm3 is None else minimumMm3
        tableNode, self.rows = self.logic.lesionTable(
            node.outputSegmentation, node.inputVolume, minimum, node.lesionTable
        )
        node.lesionTable = tableNode
        self.ui.lesionTableView.setMRMLTableNode(tableNode)
        self.ui.saveLesionCsvButton.enabled = True
        leftOut = int(tableNode.GetAttribute(lesions.LEFT_OUT_ATTRIBUTE) or 0)
        self.ui.lesionCountLabel.text = lesions.listing_summary(len(self.rows), leftOut, minimum)

    def onMinimumChanged(self, value: int) -> None:
        """The minimum filters the listed lesions: a table already shown is listed again at once."""
        node = self.parameterNode()
        if node is None or not node.lesionTable or not node.outputSegmentation or not node.inputVolume:
            return
        # Read the spin box: its change signal comes before the parameter node is updated.
        with slicer.util.tryWithErrorDisplay(_("Could not list the lesions."), waitCursor=True):
            self.update(value)

    def onLesionTable(self, _checked: bool = False) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not list the lesions."), waitCursor=True):
            self.update()

    def onRowClicked(self, index: Any) -> None:
        node = self.parameterNode()
        if node is None or not node.lesionTable:
            return
        lesions.jump_to_lesion(
            slicer.mrmlScene, lesions.lesion_position(node.lesionTable, tableViewRow(self.ui.lesionTableView, index))
        )

    def writeCsv(self, path: str) -> None:
        node = self.parameterNode()
        # ProstateMetSeg's "Accepted lesions only" holds for the lesion report as for the export.
        acceptedOnly = bool(getattr(node, "exportAcceptedOnly", False))
        rows = self.logic.lesionReportRows(node.outputSegmentation, self.rows) if acceptedOnly else self.rows
        lesions.write_lesion_csv(path, rows)


def ensurePythonPackages(log: Callable[[str], None], spec: Any = None) -> bool:
    """Install what the segmentation job needs, after asking; False when the user declines or it fails.

    torch goes through the PyTorchUtils extension when it is installed, so that its CUDA build matches the
    GPU driver; otherwise through pip (a CPU or default build).  ``spec``: the chosen model, whose engine may need
    more (nnunetv2 for an imported nnU-Net model, installed on its first use).
    """
    missing = segmenting.missing_requirements()
    if missing:
        names = ", ".join(requirement for _name, requirement in missing)
        # DICOM SEG's highdicom and the CPU's OpenVINO come along with the required install, not as prompts of
        # their own at each Segment.
        extras = segmenting.missing_export_requirements()
        extraNames = ", ".join(requirement for _name, requirement in extras)
        speed = segmenting.missing_speed_requirements()
        speedNames = ", ".join(requirement for _name, requirement in speed)
        if not slicer.util.confirmOkCancelDisplay(
            _(
                "LesionSeg needs Python packages that this Slicer does not have yet: {names}.\n\n"
                "Install them now? This downloads several hundred MB and can take minutes."
            ).format(names=names)
            + (
                "\n\n"
                + _(
                    "{extras} is installed with them, for DICOM SEG export (on Slicer 5.10 it upgrades the "
                    "bundled pydicom 2.4 to 3)."
                ).format(extras=extraNames)
                if extras
                else ""
            )
            + (
                "\n\n"
                + _("{speed} is installed with them, to run the network faster on the CPU.").format(speed=speedNames)
                if speed
                else ""
            ),
            _("Install Python packages"),
        ):
            log(_("Packages not installed; LesionSeg needs {names}.").format(names=names))
            return False
        with slicer.util.WaitCursor():
            if any(name == "torch" for name, _requirement in missing):
                if hasattr(slicer.modules, "pytorchutils"):
                    import PyTorchUtils

                    if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                        log(_("PyTorch was not installed."))
                        return False
                else:
                    log(_("The PyTorch extension is not installed; installing torch with pip (CPU or default build)."))
                    slicer.util.pip_install("torch")
            others = [requirement for name, requirement in missing if name != "torch"]
            if others:
                slicer.util.pip_install(others)
            # Optional groups: segmenting needs neither, so a failed install only costs what each one is for.
            optional = (
                (extras, extraNames, _("DICOM SEG export stays unavailable")),
                (speed, speedNames, _("the network runs through torch")),
            )
            for group, groupNames, without in optional:
                if not group:
                    continue
                try:
                    slicer.util.pip_install([requirement for _name, requirement in group])
                    names += ", " + groupNames
                except Exception as error:
                    log(
                        _("{packages} was not installed ({error}); {without}.").format(
                            packages=groupNames, error=error, without=without
                        )
                    )
        importlib.invalidate_caches()
        log(_("Installed: {names}").format(names=names))
    if not _ensureModelPackages(log, spec):
        return False
    import torch

    if not torch.cuda.is_available():
        log(_("No CUDA GPU is available to PyTorch: the model runs on the CPU, which takes longer."))
    return True


def _ensureModelPackages(log: Callable[[str], None], spec: Any) -> bool:
    """Install, after asking, what the chosen model's engine needs beyond the common packages (nnunetv2)."""
    what = _("The nnU-Net model {model}").format(model=spec.id) if spec is not None else ""
    return _installNoDeps(log, segmenting.missing_model_requirements(spec), what)


def ensureRecipePackages(log: Callable[[str], None], recipe: str) -> bool:
    """Install, after asking, what training with ``recipe`` needs beyond the common packages (nnU-Net's trainer);
    False when the user declines or it fails."""
    from LesionSegLib import training

    what = _("Training with {recipe}").format(recipe=recipe)
    return _installNoDeps(log, training.missing_recipe_requirements(recipe), what)


def _installNoDeps(log: Callable[[str], None], missing: list[tuple[str, str]], what: str) -> bool:
    if not missing:
        return True
    names = ", ".join(requirement for _name, requirement in missing)
    if not slicer.util.confirmOkCancelDisplay(
        _("{what} needs Python packages that this Slicer does not have yet: {names}.\n\nInstall them now?").format(
            what=what, names=names
        ),
        _("Install Python packages"),
    ):
        log(_("Packages not installed; {what} needs {names}.").format(what=what, names=names))
        return False
    with slicer.util.WaitCursor():
        slicer.util.pip_install(segmenting.model_requirements_pip_arguments(missing))
    importlib.invalidate_caches()
    log(_("Installed: {names}").format(names=names))
    return True


class SegmentPanel:
    """Model list with Download, device, Segment (Cancel while running), progress bar, stage text and log.

    The job runs in a child process (PythonSlicer); a QTimer drains its events, so Slicer stays responsive.
    """

    POLL_MS = 200

    def __init__(
        self,
        ui: Any,
        logic: Any,
        parameterNode: Callable[[], Any],
        log: Callable[[str], None],
        onResult: Callable[[Any], None] | None = None,
    ) -> None:
        self.ui, self.logic, self.parameterNode, self.log, self.onResult = ui, logic, parameterNode, log, onResult
        self.entries: list[Any] = []
        self.listProblem = ""
        self.run: Any = None
        self.download: Any = None
        self.timer = qt.QTimer()
        self.timer.setInterval(self.POLL_MS)
        self.timer.connect("timeout()", self.onTimer)
        ui.segmentButton.connect("clicked(bool)", self.onSegmentOrCancel)
        ui.downloadModelButton.connect("clicked(bool)", self.onDownload)
        ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)

    @property
    def busy(self) -> bool:
        return self.run is not None or self.download is not None

    def refreshModels(self) -> None:
        """Fill the model selector from the registry, keeping the parameter node's choice."""
        self.entries, problem = self.logic.listModels()
        if problem and problem != self.listProblem:
            self.log(problem)
        self.listProblem = problem
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for entry in self.entries:
            combo.addItem(segmenting.describe_entry(entry))
        node = self.parameterNode()
        ids = [entry.spec.id for entry in self.entries]
        # A phantom-trained demo model is never preselected: with no model for patients, nothing is (-1).
        chosen = segmenting.preselected_model_id(self.entries, node.modelId if node is not None else "")
        combo.setCurrentIndex(ids.index(chosen) if chosen else -1)
        combo.blockSignals(wasBlocked)
        combo.enabled = bool(self.entries) and not self.busy
        if not self.entries:
            self.ui.modelInfoLabel.text = problem
        if self.logic.verifyingModels():
            self.timer.start()  # large new weights are being hashed on a thread; list again when it is done
        self.onModelChanged()

    def currentEntry(self) -> Any:
        index = self.ui.modelComboBox.currentIndex
        return self.entries[index] if 0 <= index < len(self.entries) else None

    def onModelChanged(self, _index: int = -1) -> None:
        entry = self.currentEntry()
        node = self.parameterNode()
        self.showModelInputs(entry)
        if entry is None:
            self.ui.downloadModelButton.enabled = False
            if self.entries:
                self.ui.modelInfoLabel.text = _(
                    "Choose a model. Demo models were trained on synthetic phantoms: not for clinical use."
                )
            self.updateSegmentButton()
            return
        changed = node is not None and node.modelId != entry.spec.id
        if changed:
            node.modelId = entry.spec.id
        # Its second channel's volume, if the scene has one named for it; a newly chosen model's nnU-Net options.
        self.logic.applyModelChoice(node, entry, slicer.mrmlScene, resetOptions=changed)
        self.logic.modelChosen(entry.spec.id)  # the warm worker frees another model's memory now
        problem = segmenting.weights_problem(entry)
        # Description, intended use and licence come from the spec, shown before anything runs.
        self.ui.modelInfoLabel.text = segmenting.model_summary(entry) + "\n" + (problem or _("Ready."))
        self.ui.downloadModelButton.enabled = (
            bool(problem) and not entry.pending and bool(entry.spec.weights.url) and not self.busy
        )
        self.updateSegmentButton()

    def showModelInputs(self, entry: Any) -> None:
        """One labelled volume selector per channel of the chosen model; the nnU-Net options for an nnU-Net model."""
        labels = channels.channel_labels(None if entry is None else entry.spec)
        self.ui.inputVolumeLabel.text = labels[0]
        for index, name in enumerate(channels.CHANNEL_FIELDS[1:], start=1):
            shown = index < len(labels)
            getattr(self.ui, f"{name}Label").visible = shown
            getattr(self.ui, f"{name}Selector").visible = shown
            if shown:
                getattr(self.ui, f"{name}Label").text = labels[index]
        self.ui.nnunetCollapsibleButton.visible = self.logic.isNnunetModel(entry)

    def readiness(self) -> tuple[bool, str]:
        """Segment's state: Cancel is always available while a job runs."""
        if self.run is not None:
            return True, _("Cancel the running segmentation; nothing is added to the scene.")
        if self.download is not None:
            return False, _("Wait for the model download to finish.")
        enabled, reason = self.logic.segmentReadiness(self.parameterNode())
        entry = self.currentEntry()
        packages = segmenting.packages_problem() if entry is None else ""
        if packages:
            return True, packages  # Segment installs them, then lists the models
        if enabled and entry is None and self.entries:
            return False, _("Choose the model to run.")
        if enabled and entry is None:
            return False, _("No model to run; add one to the LesionSeg models folder.")
        if enabled and segmenting.weights_problem(entry):
            return False, segmenting.weights_problem(entry)
        channelsProblem = self.logic.channelsReadiness(self.parameterNode(), entry) if enabled else ""
        if channelsProblem:
            return False, channelsProblem
        uncertaintyProblem = self.logic.uncertaintyReadiness(self.parameterNode(), entry) if enabled else ""
        if uncertaintyProblem:
            return False, uncertaintyProblem
        return enabled, reason

    def updateSegmentButton(self) -> None:
        self.ui.segmentButton.enabled, self.ui.segmentButton.toolTip = self.readiness()

    def onSegmentOrCancel(self, _checked: bool = False) -> None:
        if self.run is not None:
            self.log(_("Cancelling..."))
            self.run.cancel()
            self._finishRun()
            return
        entry = self.currentEntry()
        if not ensurePythonPackages(self.log, entry.spec if entry is not None else None):
            return
        if self.currentEntry() is None:
            # The packages were just installed: list the models, and let the user choose before running one.
            self.refreshModels()
            if self.entries:
                self.log(_("Models listed; choose one and click Segment."))
            return
        node = self.parameterNode()
        try:
            options = self.logic.segmentOptions(node)
            entry = self.currentEntry()
            volumes = self.logic.channelVolumes(node, entry)
            self.run = self.logic.startSegmentation(
                volumes[0],
                entry,
                node.device,
                options["cropBody"],
                options["threshold"],
                volumes[1:],
                self.logic.nnunetOptions(node, entry),
                uncertainty=options["uncertainty"],
            )
        except (ValueError, RuntimeError) as error:
            self.log(str(error))
            slicer.util.errorDisplay(str(error), windowTitle=_("Cannot segment"))
            return
        self.log(
            _("Segmenting {volume} with {model} on {device}...").format(
                volume=node.inputVolume.GetName(), model=self.currentEntry().spec.id, device=node.device
            )
        )
        if options["threshold"] is not None:
            self.log(_("Detection threshold: {threshold:.2f}").format(threshold=options["threshold"]))
        if options["cropBody"]:
            self.log(_("Skipping the air around the body."))
        self.ui.segmentButton.text = _("Cancel")
        self.ui.modelComboBox.enabled = False
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.value = 0
        self.updateSegmentButton()
        self.timer.start()

    def onDownload(self, _checked: bool = False) -> None:
        entry = self.currentEntry()
        if entry is None or self.busy:
            return
        self.download = self.logic.startDownload(entry.spec.id)
        self.log(_("Downloading the weights of {model}...").format(model=entry.spec.id))
        self.ui.stageLabel.text = _("downloading")
        self.ui.progressBar.setRange(0, 0)  # no byte count comes back: a busy bar
        self.ui.downloadModelButton.enabled = False
        self.updateSegmentButton()
        self.timer.start()

    def onTimer(self) -> None:
        if self.run is not None:
            status = self.run.poll()
            for line in status.log:
                self.log(line)
            if status.percent is not None:
                self.ui.progressBar.value = int(round(status.percent))
            self.ui.stageLabel.text = status.stage
            if self.run.finished:
                self._finishRun()
        if self.download is not None:
            for event in self.download.poll():
                text = event.data.get("text")
                if text:
                    self.log(str(text))
            if self.download.state.finished:
                self._finishDownload()
        verifying = self.logic.verifyingModels()
        if not verifying and any(entry.pending for entry in self.entries):
            self.refreshModels()  # the background hashing is done: show each model's verified state
        if not self.busy and not verifying:
            self.timer.stop()

    def _finishRun(self) -> None:
        run, self.run = self.run, None
        self.ui.segmentButton.text = _("Segment")
        self.ui.modelComboBox.enabled = bool(self.entries)
        failure = run.failure()
        if failure:
            self.ui.stageLabel.text = run.status.stage
            self.log(failure)
            run.cleanup()
            if run.state is not JobState.CANCELLED:
                slicer.util.errorDisplay(failure, windowTitle=_("Segmentation failed"))
        else:
            with slicer.util.tryWithErrorDisplay(_("Could not load the segmentation."), waitCursor=True):
                segmentationNode = self.logic.loadSegmentationResult(run, slicer.mrmlScene)
                self.parameterNode().outputSegmentation = segmentationNode
                self.log(_("Added {name}.").format(name=segmentationNode.GetName()))
                if self.onResult is not None:
                    self.onResult(segmentationNode)
        self.ui.progressBar.setRange(0, 100)
        self.updateSegmentButton()

    def _finishDownload(self) -> None:
        job, self.download = self.download, None
        self.ui.progressBar.setRange(0, 100)
        if job.state is JobState.SUCCEEDED:
            self.log(_("Weights downloaded and verified."))
            self.ui.stageLabel.text = ""
        else:
            message = job.error_text or job.stderr_text[-500:] or job.state.value
            self.log(_("Download failed: {message}").format(message=message))
            slicer.util.errorDisplay(message, windowTitle=_("Download failed"))
        self.refreshModels()
