import logging
import os
import sys
import time
from typing import Annotated

import numpy as np
import slicer
from slicer import vtkMRMLPlotChartNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, Decimals, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
)

if sys.version_info < (3, 10):  # noqa: UP036 (this file runs in whatever Python the user's Slicer embeds)
    # Slicer 5.8 and older embed Python 3.9; the engine needs 3.10 or newer (Slicer 5.10 has 3.12).
    raise ImportError(
        f"LesionSeg needs Slicer 5.10 or newer (Python >= 3.10); this Slicer runs Python {sys.version.split()[0]}"
    )

try:
    import lesionseg.mrml
    import LesionSegLib.ranking
    import LesionSegLib.training
except ModuleNotFoundError as error:
    if error.name not in ("lesionseg", "LesionSegLib"):
        raise
    # The extension installs the engine and LesionSegLib beside this file (qt-scripted-modules/). A
    # developer who adds this folder under Application Settings > Modules runs the source tree instead,
    # where both are in the repository root: this file's grand-parent folder.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import lesionseg.mrml
    import LesionSegLib.ranking
    import LesionSegLib.training
from lesionseg.image import Image
from lesionseg.labels import LabelInfo
from lesionseg.models import models_dir
from LesionSegLib.modulewidget import LesionSegModuleWidget
from LesionSegLib.segmenting import slicer_python
from LesionSegLib.tables import table_rows
from LesionSegLib.widgets import SegmentMappingEditor, ensurePythonPackages, ensureRecipePackages, showPlotInLayout

DEVICES = ("auto", "cpu", "cuda")
LEARNING_RATE_DECIMALS = 8


#
# LesionSegTraining
#


class LesionSegTraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("LesionSeg Training")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["LesionSeg developers"]
        self.parent.helpText = _("""
Builds a training dataset from curated cases (a CT volume and its segmentation, with who checked it and
which AI model proposed it) and trains a segmentation model on it in a background process that can be
cancelled and resumed. The trained model appears in the SpleenSeg and ProstateMetSeg model lists.
LesionSeg's documentation is README.md in its source folder.
""")
        self.parent.acknowledgementText = _("""
Part of the LesionSeg extension. Its engine builds on 3D Slicer, MONAI, PyTorch and SimpleITK.
""")


#
# LesionSegTrainingParameterNode
#


@parameterNodeWrapper
class LesionSegTrainingParameterNode:
    """
    The choices of the LesionSegTraining module, kept in the scene.

    datasetFolder - The folder that holds the training cases ("" until one is chosen).
    caseVolume - The CT volume of the case to add.
    caseSegmentation - The curated segmentation of that volume.
    annotator - Who checked the case's segmentation (recorded with the case).
    configPreset - Name of the training configuration preset; the list is filled from the engine.
    modelName - Name (id) of the model to train; the segmentation modules list it under this name.
    epochs - Epochs to train (0: the preset's number).
    learningRate - Learning rate (0: the preset's).
    device - Where training runs.
    casesTable, historyTable, historyChart - Where the case list and the training curves are shown.
    rankFolder - The folder of unlabelled volumes (or a dataset) that "Which case next" ranks.
    rankModelId - The model whose uncertainty ranks them.
    rankMethod - entropy, mutual_information, region_entropy, lesion_count or least_foreground.
    rankingTable - The latest ranking, most uncertain first.
    """

    # A str, not a pathlib.Path: the Path serializer turns "nothing chosen" into ".", which would
    # read as "the folder Slicer was started from". The widget binds this field by hand.
    datasetFolder: str = ""
    caseVolume: vtkMRMLScalarVolumeNode
    caseSegmentation: vtkMRMLSegmentationNode
    annotator: str = ""
    configPreset: str = ""
    modelName: str = ""
    epochs: Annotated[int, WithinRange(0, 100000)] = 0
    # Eight decimals: fine-tuning rates such as 2.5e-5 or 1e-6 must survive the spin box, which rounds to them.
    learningRate: Annotated[float, WithinRange(0.0, 1.0), Decimals(LEARNING_RATE_DECIMALS)] = 0.0
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    casesTable: vtkMRMLTableNode
    historyTable: vtkMRMLTableNode
    historyChart: vtkMRMLPlotChartNode
    rankFolder: str = ""  # bound by hand, as datasetFolder
    rankModelId: str = ""
    rankMethod: Annotated[str, Choice(list(LesionSegLib.ranking.METHODS))] = "entropy"
    rankingTable: vtkMRMLTableNode


#
# LesionSegTrainingWidget
#


class LesionSegTrainingWidget(LesionSegModuleWidget):
    """The panel: LesionSegLib's LesionSegModuleWidget builds and binds it from Resources/UI/LesionSegTraining.ui."""

    POLL_MS = 500
    volumeField = "caseVolume"

    def __init__(self, parent=None) -> None:
        LesionSegModuleWidget.__init__(self, parent)
        self.run = None
        self.rankRun = None  # the ranking job while it runs
        self.ranking = None  # the latest ranking: model, method and the cases, most uncertain first

    def createLogic(self):
        return LesionSegTrainingLogic()

    def setupPanels(self) -> None:
        self.labelMapping = SegmentMappingEditor(self.ui.caseLabelMappingTableWidget, _("Dataset label"))
        self.timer = qt_timer(self.POLL_MS, self.onTimer)

        self.ui.datasetFolderPathLineEdit.connect("currentPathChanged(QString)", self.onDatasetFolderChanged)
        self.ui.datasetFolderPathLineEdit.connect("validInputChanged(bool)", self.onDatasetFolderValidityChanged)
        self.ui.caseVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onCaseChanged)
        self.ui.caseSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onCaseChanged)
        self.ui.configPresetComboBox.connect("currentIndexChanged(int)", self.onPresetChanged)
        self.ui.saveCaseButton.connect("clicked(bool)", self.onSaveCase)
        self.ui.removeCaseButton.connect("clicked(bool)", self.onRemoveCase)
        self.ui.trainButton.connect("clicked(bool)", lambda _checked=False: self.onTrain(resume=False))
        self.ui.resumeButton.connect("clicked(bool)", lambda _checked=False: self.onTrain(resume=True))
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)

        self.ui.configPresetComboBox.addItems(self.logic.presets())

        self.rankTimer = qt_timer(self.POLL_MS, self.onRankTimer)
        self.ui.rankFolderPathLineEdit.connect("currentPathChanged(QString)", self.onRankFolderChanged)
        self.ui.rankModelComboBox.connect("currentIndexChanged(int)", self.onRankModelChanged)
        self.ui.rankButton.connect("clicked(bool)", self.onRank)
        self.ui.loadRankedCaseButton.connect("clicked(bool)", self.onLoadRankedCase)

    def stopBackgroundWork(self) -> None:
        self.timer.stop()
        self.rankTimer.stop()
        if self.run is not None:
            self.run.cancel()
        if self.rankRun is not None:
            self.rankRun.cancel()
            self.rankRun = None

    def refreshPanels(self) -> None:
        presets = self.logic.presets()
        if self._parameterNode.configPreset not in presets and presets:
            self._parameterNode.configPreset = presets[0]
        if self._parameterNode.configPreset in presets:
            self.ui.configPresetComboBox.currentIndex = presets.index(self._parameterNode.configPreset)
        self.onCaseChanged()
        self.refreshDataset()
        models = self.logic.rankingModels()
        self.ui.rankModelComboBox.clear()
        self.ui.rankModelComboBox.addItems(models)
        if self._parameterNode.rankModelId not in models and models:
            self._parameterNode.rankModelId = models[0]
        if self._parameterNode.rankModelId in models:
            self.ui.rankModelComboBox.currentIndex = models.index(self._parameterNode.rankModelId)

    def onRankFolderChanged(self, path: str) -> None:
        if self._parameterNode and self._parameterNode.rankFolder != path:
            self._parameterNode.rankFolder = path

    def onRankModelChanged(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.rankModelId = self.ui.rankModelComboBox.currentText

    def onRank(self, _checked: bool = False) -> None:
        if self.rankRun is not None:  # the button reads Cancel while a ranking runs
            self.log(_("Cancelling the ranking..."))
            self.rankRun.cancel()
            self.onRankTimer()
            return
        if not ensurePythonPackages(self.log):
            return
        node = self._parameterNode
        try:
            self.rankRun = self.logic.startRanking(node.rankFolder, node.rankModelId, node.device, node.rankMethod)
        except (ValueError, RuntimeError) as error:
            self.log(str(error))
            slicer.util.errorDisplay(str(error), windowTitle=_("Cannot rank"))
            return
        self.ui.rankProgressBar.value = 0
        self.ui.rankButton.text = _("Cancel")
        self.log(_("Ranking the volumes in {folder} by {method}...").format(folder=node.rankFolder,
                                                                            method=node.rankMethod))  # fmt: skip
        self.rankTimer.start()
        self._checkCanApply()

    def onRankTimer(self) -> None:
        if self.rankRun is None:
            return self.rankTimer.stop()
        run = self.rankRun
        run.poll()
        self.ui.rankProgressBar.value = int(round(100 * run.fraction))
        for line in run.log:
            self.log(line)
        if run.finished:
            self.rankTimer.stop()
            self.rankRun = None
            self.ui.rankButton.text = _("Rank volumes")
            failure = run.failure()
            if failure:
                self.log(failure)
            else:
                self.ranking = run.ranking
                node = self._parameterNode
                node.rankingTable = self.logic.rankingTable(run, node.rankingTable)
                self.ui.rankingTableView.setMRMLTableNode(node.rankingTable)
                first = self.ranking["cases"][0]["case"] if self.ranking["cases"] else ""
                self.log(_("Ranked {count} volumes; the model is least sure of {case}.").format(
                    count=len(self.ranking["cases"]), case=first))  # fmt: skip
            run.cleanup()
            self._checkCanApply()

    def selectedRankRow(self) -> int:
        """The ranking row selected in the table (the first, most uncertain, when none is)."""
        index = self.ui.rankingTableView.selectionModel().currentIndex()
        if index is None or not index.isValid():
            return 0
        return self.ui.rankingTableView.sortFilterProxyModel().mapToSource(index).row()

    def onLoadRankedCase(self, _checked: bool = False) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not load the case."), waitCursor=True):
            volume = self.logic.loadRankedCase(slicer.mrmlScene, self.ranking, self.selectedRankRow())
            self._parameterNode.caseVolume = volume
            slicer.util.setSliceViewerLayers(background=volume, fit=True)
            rank = volume.GetAttribute(LesionSegLib.ranking.RANK_ATTRIBUTES["rank"])
            text = _("Loaded {case} (rank {rank}): segment it, correct it, and save it as a case.")
            self.log(text.format(case=volume.GetName(), rank=rank))

    def onDatasetFolderChanged(self, path: str) -> None:
        if self._parameterNode and self._parameterNode.datasetFolder != path:
            self._parameterNode.datasetFolder = path
            self.refreshDataset()

    def onDatasetFolderValidityChanged(self, valid: bool) -> None:
        # CTK signals currentPathChanged only for non-empty text: an emptied field arrives here instead.
        if not valid and not self.ui.datasetFolderPathLineEdit.currentPath:
            self.onDatasetFolderChanged("")

    def onPresetChanged(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.configPreset = self.ui.configPresetComboBox.currentText

    def onCaseChanged(self, node=None) -> None:
        # Read the nodes from the selectors: this runs before the parameter node has been updated.
        volumeNode = self.ui.caseVolumeSelector.currentNode()
        segmentationNode = self.ui.caseSegmentationSelector.currentNode()
        self.refreshLabelMapping(segmentationNode)
        if volumeNode is None:
            self.ui.caseInfoLabel.text = ""
            return
        try:
            self.ui.caseInfoLabel.text = self.logic.describeCase(volumeNode, segmentationNode)
        except ValueError as error:
            self.ui.caseInfoLabel.text = str(error)

    def refreshLabelMapping(self, segmentationNode=None) -> None:
        names = [info.name for info in self.logic.caseLabels(segmentationNode)] if segmentationNode else []
        folder = self._parameterNode.datasetFolder if self._parameterNode else ""
        labels = self.logic.datasetLabelNames(folder)
        # A new dataset takes its labels from the first case's segments.
        self.labelMapping.fill(names, labels if labels else names)

    def refreshDataset(self) -> None:
        if self._parameterNode is None:
            return
        folder = self._parameterNode.datasetFolder
        self.ui.datasetInfoLabel.text = self.logic.describeDataset(folder)
        if LesionSegLib.training.dataset_exists(folder):
            self._parameterNode.casesTable = self.logic.casesTable(folder, self._parameterNode.casesTable)
            self.ui.casesTableView.setMRMLTableNode(self._parameterNode.casesTable)
        else:  # another folder, or none: the previous dataset's cases are not this one's
            self.ui.casesTableView.setMRMLTableNode(None)
        self.refreshLabelMapping(self._parameterNode.caseSegmentation)
        self._checkCanApply()

    def selectedCase(self) -> str:
        table = self._parameterNode.casesTable if self._parameterNode else None
        index = self.ui.casesTableView.selectionModel().currentIndex() if table else None
        if table is None or index is None or not index.isValid():
            return ""
        row = self.ui.casesTableView.sortFilterProxyModel().mapToSource(index).row()
        rows = table_rows(table)
        return rows[row]["case"] if 0 <= row < len(rows) else ""

    def onSaveCase(self, _checked: bool = False) -> None:
        # Cases are written as NIfTI through nibabel, which a fresh Slicer lacks.
        if not ensurePythonPackages(self.log):
            return
        node = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Could not save the case."), waitCursor=True):
            labels = self.logic.datasetLabelNames(node.datasetFolder)
            mapping = self.labelMapping.mapping() if labels else None
            record = self.logic.saveCase(
                node.datasetFolder, node.caseVolume, node.caseSegmentation, node.annotator, mapping
            )
            self.log(
                _("Saved {case} version {version} (labels {labels}).").format(
                    case=record.case_id, version=record.version, labels=list(record.labels_present)
                )
            )
            self.refreshDataset()

    def onRemoveCase(self, _checked: bool = False) -> None:
        caseId = self.selectedCase()
        if not caseId:
            slicer.util.errorDisplay(_("Select the case to remove in the case table."))
            return
        if not slicer.util.confirmOkCancelDisplay(
            _("Take {case} out of training? Its files stay in the dataset as a removed version.").format(case=caseId)
        ):
            return
        with slicer.util.tryWithErrorDisplay(_("Could not remove the case."), waitCursor=True):
            version = self.logic.removeCase(self._parameterNode.datasetFolder, caseId, self._parameterNode.annotator)
            self.log(_("Removed {case} (kept as version {version}).").format(case=caseId, version=version))
            self.refreshDataset()

    def onTrain(self, resume: bool) -> None:
        node = self._parameterNode
        if self.run is not None or not ensurePythonPackages(self.log):
            return
        if not ensureRecipePackages(self.log, node.configPreset):  # nnU-Net's trainer, on its first use
            return
        try:
            takesEpochs = self.logic.epochsReadiness(node)[0]  # nnU-Net's trainer sets its own
            self.run = self.logic.startTraining(
                node.datasetFolder,
                node.configPreset,
                node.modelName,
                node.device,
                (node.epochs or None) if takesEpochs else None,
                (node.learningRate or None) if takesEpochs else None,
                resume,
            )
        except (ValueError, RuntimeError) as error:
            self.log(str(error))
            slicer.util.errorDisplay(str(error), windowTitle=_("Cannot train"))
            return
        node.historyTable = self.run.history_table(slicer.mrmlScene, node.historyTable)
        if not node.historyChart:
            node.historyChart = self.logic.historyChart(node.historyTable, node.modelName)
        self.ui.historyTableView.setMRMLTableNode(node.historyTable)
        showPlotInLayout(node.historyChart)
        self.ui.progressBar.value = 0
        self.ui.progressLabel.text = _("starting")
        self.log(
            _("Training {model} on {folder} ({preset}){resume}...").format(
                model=node.modelName,
                folder=node.datasetFolder,
                preset=node.configPreset,
                resume=_(", resumed") if resume else "",
            )
        )
        self.timer.start()
        self._checkCanApply()

    def onCancel(self, _checked: bool = False) -> None:
        if self.run is not None:
            self.log(_("Cancelling the training..."))
            self.run.cancel()
            self.onTimer()

    def onTimer(self) -> None:
        run = self.run
        if run is None:
            self.timer.stop()
            return
        if run.poll():
            self._parameterNode.historyTable = run.history_table(slicer.mrmlScene, self._parameterNode.historyTable)
            self.ui.progressBar.value = int(round(100 * run.fraction))
        for line in run.log:
            self.log(line)
        self.ui.progressLabel.text = run.progress_text()
        if run.finished:
            self.timer.stop()
            self.run = None
            failure = run.failure()
            if failure:
                self.log(failure)
                run.cleanup()
            else:
                with slicer.util.tryWithErrorDisplay(_("The trained model could not be read."), waitCursor=True):
                    spec = run.model()
                    self.log(
                        _("Model {id} {version} is ready: choose it in SpleenSeg or ProstateMetSeg.").format(
                            id=spec.id, version=spec.version
                        )
                    )
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        # datasetFolder is bound by hand (see the parameter node); only push a real change to the
        # line edit, so typing in it is not interrupted.
        if self._parameterNode and self.ui.datasetFolderPathLineEdit.currentPath != self._parameterNode.datasetFolder:
            self.ui.datasetFolderPathLineEdit.currentPath = self._parameterNode.datasetFolder
        if self._parameterNode and self.ui.rankFolderPathLineEdit.currentPath != self._parameterNode.rankFolder:
            self.ui.rankFolderPathLineEdit.currentPath = self._parameterNode.rankFolder
        LesionSegModuleWidget._checkCanApply(self, caller, event)

    def buttonStates(self):
        running = self.run is not None
        return [
            (self.ui.saveCaseButton, self.logic.saveCaseReadiness(self._parameterNode)),
            (self.ui.removeCaseButton, self.logic.removeCaseReadiness(self._parameterNode)),
            (self.ui.trainButton, self.logic.trainReadiness(self._parameterNode, running)),
            (self.ui.cancelButton, self.logic.cancelReadiness(running)),
            (self.ui.resumeButton, self.logic.resumeReadiness(self._parameterNode, running)),
            (self.ui.rankButton, self.logic.rankReadiness(self._parameterNode, self.rankRun is not None)),
            (self.ui.loadRankedCaseButton, self.logic.loadRankedCaseReadiness(self.ranking)),
            (self.ui.epochsSpinBox, self.logic.epochsReadiness(self._parameterNode)),
            (self.ui.learningRateSpinBox, self.logic.epochsReadiness(self._parameterNode)),
        ]


def qt_timer(intervalMs: int, callback):
    import qt

    timer = qt.QTimer()
    timer.setInterval(intervalMs)
    timer.connect("timeout()", callback)
    return timer


#
# LesionSegTrainingLogic
#


class LesionSegTrainingLogic(ScriptedLoadableModuleLogic):
    """Everything LesionSegTraining computes, callable without the widget: methods take the nodes they work on.

    The work is done by LesionSegLib.training (Qt-free, tested on a bare MRML scene) and the engine.
    ``modelsDir`` is where trained models go (None: the engine's models folder, which the segmentation
    modules list); ``pythonExecutable`` runs the training (None: PythonSlicer).
    """

    modelsDir = None
    pythonExecutable = None

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        # PythonSlicer sets up its own paths: the training starts from the environment Slicer started with.
        self.childEnvironment = slicer.util.startupEnvironment()

    def getParameterNode(self):
        return LesionSegTrainingParameterNode(super().getParameterNode())

    def caseLabels(self, segmentationNode: vtkMRMLSegmentationNode) -> list[LabelInfo]:
        """The case's segments as engine labels (1..N in segment order)."""
        return [info for _segmentId, info in lesionseg.mrml.segment_labels(segmentationNode)]

    def describeCase(
        self, volumeNode: vtkMRMLScalarVolumeNode, segmentationNode: vtkMRMLSegmentationNode | None
    ) -> str:
        """One line on the case: the volume's grid and the segment names; raises ValueError for unusable input."""
        image: Image = lesionseg.mrml.image_from_volume_node(volumeNode)
        text = _("{size} voxels, {spacing} mm").format(
            size="×".join(str(n) for n in image.size),
            spacing="×".join(f"{s:.3g}" for s in image.spacing),
        )
        if segmentationNode is not None:
            names = [info.name for info in self.caseLabels(segmentationNode)]
            text += "; " + (_("segments: {names}").format(names=", ".join(names)) if names else _("no segments"))
        return text

    def setCase(
        self,
        parameterNode: LesionSegTrainingParameterNode,
        volumeNode: vtkMRMLScalarVolumeNode,
        segmentationNode: vtkMRMLSegmentationNode,
    ) -> str:
        """Choose the case to add, after checking the engine can read it; returns its description."""
        description = self.describeCase(volumeNode, segmentationNode)
        parameterNode.caseVolume = volumeNode
        parameterNode.caseSegmentation = segmentationNode
        logging.info(f"LesionSegTraining case: {volumeNode.GetName()} ({description})")
        return description

    def datasetLabelNames(self, folder: str) -> list[str]:
        """The dataset's label names (background left out); empty when the folder holds no dataset."""
        if not LesionSegLib.training.dataset_exists(folder):
            return []
        from lesionseg.datasets import Dataset

        return [name for value, name in sorted(Dataset(folder).labels().items()) if value != 0]

    def describeDataset(self, folder: str) -> str:
        if not folder:
            return _("Choose a dataset folder.")
        if not LesionSegLib.training.dataset_exists(folder):
            return _("No dataset here yet: saving the first case creates one, labelled by its segments.")
        rows = LesionSegLib.training.case_rows(folder)
        return _("{count} cases; labels: {labels}").format(
            count=len(rows), labels=", ".join(self.datasetLabelNames(folder))
        )

    def saveCase(self, folder: str, volumeNode, segmentationNode, annotator: str, segmentToLabel=None):
        """Save a case; ``segmentToLabel`` maps segment names to dataset label names (None: match by name)."""
        labelMap = None
        if segmentToLabel is not None:
            from lesionseg.datasets import Dataset

            values = {name: value for value, name in Dataset(folder).labels().items() if value != 0}
            labelMap = {segment: values[label] for segment, label in segmentToLabel.items()}
        return LesionSegLib.training.save_case(folder, volumeNode, segmentationNode, annotator, labelMap)

    def casesTable(self, folder: str, tableNode=None):
        return LesionSegLib.training.case_table(
            slicer.mrmlScene if tableNode is None else tableNode.GetScene(), folder, tableNode
        )

    def removeCase(self, folder: str, caseId: str, by: str) -> int:
        return LesionSegLib.training.remove_dataset_case(folder, caseId, by)

    def presets(self) -> list[str]:
        return LesionSegLib.training.training_recipes()

    def startTraining(self, folder, preset, modelName, device="auto", epochs=None, learningRate=None, resume=False):
        """Start a background training run; the caller polls it (the widget on a timer)."""
        run = LesionSegLib.training.TrainingRun(
            folder,
            preset,
            modelName,
            self.modelsDir or models_dir(),
            self.pythonExecutable or slicer_python(),
            device,
            epochs,
            learningRate,
            resume,
            self.childEnvironment,
        )
        return run.start()

    def historyChart(self, tableNode, modelName: str):
        return LesionSegLib.training.history_plot(
            tableNode.GetScene(), tableNode, _("Training {model}").format(model=modelName)
        )

    def saveCaseReadiness(self, parameterNode: LesionSegTrainingParameterNode | None) -> tuple[bool, str]:
        """Whether Save current case can run now, and the tooltip that says why or why not."""
        if parameterNode is None or not parameterNode.datasetFolder:
            return False, _("Choose a dataset folder.")
        if not parameterNode.caseVolume or not parameterNode.caseSegmentation:
            return False, _("Select the case volume and its segmentation.")
        if not parameterNode.annotator.strip():
            return False, _("Enter the annotator's name.")
        return True, _("Add this case (or a new version of it) to the dataset.")

    def removeCaseReadiness(self, parameterNode: LesionSegTrainingParameterNode | None) -> tuple[bool, str]:
        if parameterNode is None or not LesionSegLib.training.dataset_exists(parameterNode.datasetFolder):
            return False, _("Choose a dataset folder that holds a dataset.")
        return True, _("Take the case selected in the table out of training (kept as a removed version).")

    def rankingModels(self) -> list[str]:
        """The models that can rank volumes: LesionSeg's own (their flipped copies give the uncertainty)."""
        return LesionSegLib.ranking.ranking_models(self.modelsDir or models_dir())

    def startRanking(self, folder: str, modelId: str, device: str = "auto", method: str = "entropy"):
        """Start ranking the volumes of ``folder`` in the background; the caller polls the run (the widget on a
        timer)."""
        run = LesionSegLib.ranking.RankingRun(
            folder, modelId, self.modelsDir or models_dir(), self.pythonExecutable or slicer_python(), device, method,
            self.childEnvironment,
        )  # fmt: skip
        return run.start()

    def rankingTable(self, run, tableNode=None):
        """The finished ranking in a table node (new, or ``tableNode`` refilled)."""
        scene = slicer.mrmlScene if tableNode is None else tableNode.GetScene()
        name = _("Which case next ({method})").format(method=run.method)
        return LesionSegLib.ranking.ranking_table(scene, run.rows(), name, tableNode)

    def loadRankedCase(self, scene, ranking: dict, row: int):
        """Load the ranked case at ``row`` as a volume carrying its rank, which Save case records."""
        if not ranking or not 0 <= row < len(ranking["cases"]):
            raise ValueError("rank the volumes first, then choose one of the ranked cases")
        return LesionSegLib.ranking.load_ranked_case(scene, ranking, ranking["cases"][row])

    def rankReadiness(self, parameterNode: LesionSegTrainingParameterNode | None, running: bool) -> tuple[bool, str]:
        """Whether Rank (or Cancel, while it runs) can be pressed, and the tooltip that says why or why not."""
        if running:
            return True, _("Cancel the ranking.")
        if parameterNode is None or not parameterNode.rankFolder:
            return False, _("Choose the folder of volumes not yet annotated.")
        if not parameterNode.rankModelId:
            return False, _("No model can rank volumes yet: a LesionSeg model is needed.")
        return True, _("Segment each volume with flipped copies and rank them, the most uncertain first.")

    def loadRankedCaseReadiness(self, ranking: dict | None) -> tuple[bool, str]:
        if not ranking or not ranking.get("cases"):
            return False, _("Rank the volumes first.")
        return True, _("Load the selected case (the most uncertain when none is selected) as the case volume.")

    def epochsReadiness(self, parameterNode: LesionSegTrainingParameterNode | None) -> tuple[bool, str]:
        """Whether the epochs and learning-rate fields apply to the chosen recipe, and the tooltip that says so."""
        preset = parameterNode.configPreset if parameterNode else ""
        if LesionSegLib.training.nnunet_configuration(preset) is not None:
            return False, _("nnU-Net's trainer sets its own epochs and learning rate.")
        return True, _("0 keeps the preset's value.")

    def trainReadiness(
        self, parameterNode: LesionSegTrainingParameterNode | None, running: bool = False
    ) -> tuple[bool, str]:
        """Whether Train can run now, and the tooltip that says why or why not."""
        return self._runReadiness(parameterNode, running, resume=False)

    def resumeReadiness(
        self, parameterNode: LesionSegTrainingParameterNode | None, running: bool = False
    ) -> tuple[bool, str]:
        """Whether Resume can run now, and the tooltip that says why or why not."""
        return self._runReadiness(parameterNode, running, resume=True)

    def _runReadiness(
        self, parameterNode: LesionSegTrainingParameterNode | None, running: bool, resume: bool
    ) -> tuple[bool, str]:
        # Train and Resume both need no run going, a dataset folder and a model name; only Train needs saved
        # cases, since Resume finds its checkpoint by the model name.
        if running:
            return False, (_("A training run is going.") if resume else _("A training run is going; cancel it first."))
        if parameterNode is None or not parameterNode.datasetFolder:
            return False, _("Choose a dataset folder.")
        if not resume and not LesionSegLib.training.dataset_exists(parameterNode.datasetFolder):
            return False, _("The folder holds no dataset yet; save some cases first.")
        if not parameterNode.modelName.strip():
            if resume:
                return False, _("Enter the name of the model whose training to resume.")
            return False, _("Enter a name for the model to train.")
        if resume:
            return True, _("Resume the training of this model from its last finished epoch.")
        return True, _("Train a model on the dataset.")

    def cancelReadiness(self, running: bool = False) -> tuple[bool, str]:
        """Whether Cancel can act now: only while a training run is going."""
        if running:
            return True, _("Stop the training; the last finished epoch is kept for Resume.")
        return False, _("No training run is going.")


#
# LesionSegTrainingTest
#


class LesionSegTrainingTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        from LesionSegLib.selftest import run_scenarios

        run_scenarios(
            self,
            [
                "test_choosing_a_case_fills_the_inputs_and_the_actions_say_what_they_need",
                "test_saving_and_removing_cases_keeps_versions_and_provenance",
                "test_training_in_the_background_plots_the_curves_and_registers_the_model",
                "test_case_segmentation_round_trips_through_the_bridge",
            ],
            self.delayDisplay,
        )

    def _makeCase(self, name: str):
        k, j, i = np.indices((6, 10, 12))
        ct = Image((i * 7 + j * 131 + k * 1009).astype(np.int16) - 1024, (0.9, 0.9, 3.0), (-20.0, 35.0, -5.0))
        labels = np.zeros(ct.array.shape, np.uint8)
        labels[1:4, 2:6, 2:7] = 1
        labels[4:6, 6:9, 8:11] = 2
        volume = lesionseg.mrml.volume_node_from_image(slicer.mrmlScene, ct, name + "CT")
        segmentation = lesionseg.mrml.segmentation_node_from_labelmap(
            slicer.mrmlScene, ct.with_array(labels), name + "Segmentation", {1: "liver", 2: "lesion"}, volume
        )
        return ct, labels, volume, segmentation

    def test_choosing_a_case_fills_the_inputs_and_the_actions_say_what_they_need(self):
        self.delayDisplay("Choosing a training case")
        _ct, _labels, volume, segmentation = self._makeCase("LesionSegTrainingTest")

        logic = LesionSegTrainingLogic()
        parameterNode = logic.getParameterNode()
        description = logic.setCase(parameterNode, volume, segmentation)
        self.assertEqual(parameterNode.caseVolume, volume)
        self.assertEqual(parameterNode.caseSegmentation, segmentation)
        self.assertIn("12×10×6", description)
        self.assertIn("liver, lesion", description)

        widget = slicer.util.getModuleWidget("LesionSegTraining")
        widget.enter()
        try:
            self.assertEqual(widget.ui.caseVolumeSelector.currentNode(), volume)
            self.assertEqual(widget.ui.caseSegmentationSelector.currentNode(), segmentation)
            self.assertIn("liver, lesion", widget.ui.caseInfoLabel.text)
            self.assertIn(
                "tiny",
                [widget.ui.configPresetComboBox.itemText(i) for i in range(widget.ui.configPresetComboBox.count)],
            )
            self.assertFalse(widget.ui.cancelButton.enabled)

            # The dataset folder is bound by hand: a path typed in the widget reaches the parameter node.
            folder = slicer.util.tempDirectory("__LesionSegTrainingTest__")
            try:
                parameterNode.annotator = ""
                widget.ui.datasetFolderPathLineEdit.currentPath = folder
                self.assertEqual(parameterNode.datasetFolder, folder)
                self.assertIn("No dataset here yet", widget.ui.datasetInfoLabel.text)
                self.assertFalse(widget.ui.saveCaseButton.enabled)
                self.assertIn("annotator", widget.ui.saveCaseButton.toolTip)
                parameterNode.annotator = "Dr. Rivera"
                self.assertTrue(widget.ui.saveCaseButton.enabled)
                self.assertFalse(widget.ui.trainButton.enabled)
                self.assertIn("save some cases", widget.ui.trainButton.toolTip)
            finally:
                os.rmdir(folder)
        finally:
            widget.exit()
        self.delayDisplay("Test passed")

    def test_saving_and_removing_cases_keeps_versions_and_provenance(self):
        self.delayDisplay("Saving curated cases into a new dataset")
        from LesionSegLib import segmenting

        _ct, _labels, volume, segmentation = self._makeCase("Saved")
        segmentation.SetAttribute(segmenting.MODEL_ID_ATTRIBUTE, "tiny-spleen")
        segmentation.SetAttribute(segmenting.MODEL_VERSION_ATTRIBUTE, "0.0.1")
        folder = os.path.join(slicer.util.tempDirectory(), "dataset")
        widget = slicer.util.getModuleWidget("LesionSegTraining")
        widget.enter()
        try:
            parameterNode = widget._parameterNode
            parameterNode.caseVolume = volume
            parameterNode.caseSegmentation = segmentation
            parameterNode.annotator = "Dr. Rivera"
            widget.ui.datasetFolderPathLineEdit.currentPath = folder
            widget.ui.saveCaseButton.click()
            # The same image again (a corrected mask) is a new version of its case, never a second case.
            widget.ui.saveCaseButton.click()
            self.assertEqual(parameterNode.casesTable.GetNumberOfRows(), 1)
            self.assertEqual(str(table_rows(parameterNode.casesTable)[0]["version"]), "2")
            # Another patient's image (other voxels) becomes a second case: the button gives no case id.
            _ct2, _labels2, otherVolume, otherSegmentation = self._makeCase("Other")
            slicer.util.arrayFromVolume(otherVolume)[:] += 1
            slicer.util.arrayFromVolumeModified(otherVolume)
            parameterNode.caseVolume = otherVolume
            parameterNode.caseSegmentation = otherSegmentation
            widget.ui.saveCaseButton.click()
            rows = table_rows(parameterNode.casesTable)
            self.assertEqual([row["case"] for row in rows], ["case_0001", "case_0002"])
            self.assertEqual(rows[0]["provenance"], "AI: tiny-spleen 0.0.1, by Dr. Rivera")
            self.assertEqual(rows[0]["labels"], "liver, lesion")
            self.assertEqual(widget.logic.datasetLabelNames(folder), ["liver", "lesion"])

            version = widget.logic.removeCase(folder, "case_0002", "Dr. Rivera")
            self.assertEqual(version, 2)
            widget.refreshDataset()
            self.assertEqual(parameterNode.casesTable.GetNumberOfRows(), 1)
        finally:
            widget.exit()
        self.delayDisplay("Test passed")

    def test_training_in_the_background_plots_the_curves_and_registers_the_model(self):
        self.delayDisplay("Training a tiny model on a tiny dataset, end to end")
        from LesionSegLib import segmenting

        if segmenting.missing_requirements():
            self.skipTest(f"this Slicer lacks {segmenting.missing_requirements()}")
        folder = os.path.join(slicer.util.tempDirectory(), "dataset")
        modelsDir = slicer.util.tempDirectory()
        for number in range(3):
            k, j, i = np.indices((24, 32, 32))
            values = (np.random.default_rng(number).normal(0, 20, k.shape)).astype(np.int16)
            labels = np.zeros(values.shape, np.uint8)
            labels[8:16, 10:20, 10 + number : 22 + number] = 1
            values[labels == 1] += 150
            ct = Image(values, (1.5, 1.5, 2.0), (0.0, 0.0, 0.0), np.eye(3))
            volume = lesionseg.mrml.volume_node_from_image(slicer.mrmlScene, ct, f"TrainCT{number}")
            segmentation = lesionseg.mrml.segmentation_node_from_labelmap(
                slicer.mrmlScene, ct.with_array(labels), f"TrainSeg{number}", {1: "lesion"}, volume
            )
            LesionSegLib.training.save_case(folder, volume, segmentation, "Dr. Rivera")

        widget = slicer.util.getModuleWidget("LesionSegTraining")
        widget.logic.modelsDir = modelsDir
        widget.enter()
        try:
            parameterNode = widget._parameterNode
            widget.ui.datasetFolderPathLineEdit.currentPath = folder
            parameterNode.configPreset = "tiny"
            parameterNode.modelName = "selftest-trained"
            parameterNode.epochs = 1
            parameterNode.device = "cpu"
            self.assertTrue(widget.ui.trainButton.enabled, widget.ui.trainButton.toolTip)
            widget.ui.trainButton.click()
            self.assertTrue(widget.ui.cancelButton.enabled)
            deadline = time.monotonic() + 300
            while widget.run is not None and time.monotonic() < deadline:
                slicer.app.processEvents()
                time.sleep(0.05)
            self.assertIsNone(widget.run, "training did not finish in 300 s")
            log = widget.ui.logTextEdit.toPlainText()
            self.assertIn("is ready", log)
            self.assertEqual(parameterNode.historyTable.GetNumberOfRows(), 1)
            self.assertEqual(parameterNode.historyChart.GetNumberOfPlotSeriesNodes(), 2)
            self.assertEqual(widget.ui.progressBar.value, 100)
            self.assertIn("epoch 1", widget.ui.progressLabel.text)

            # Resume continues the same model from its checkpoint, up to the new epoch count.
            parameterNode.epochs = 2
            self.assertTrue(widget.ui.resumeButton.enabled, widget.ui.resumeButton.toolTip)
            widget.ui.resumeButton.click()
            deadline = time.monotonic() + 300
            while widget.run is not None and time.monotonic() < deadline:
                slicer.app.processEvents()
                time.sleep(0.05)
            self.assertIsNone(widget.run, "the resumed training did not finish in 300 s")
            self.assertEqual(widget.ui.logTextEdit.toPlainText().count("is ready"), 2)
            history = parameterNode.historyTable.GetTable()
            self.assertEqual(history.GetColumnByName("epoch").GetValue(history.GetNumberOfRows() - 1), 2)

            # The new model is what ProstateMetSeg lists now (its label is a lesion).
            prostate = slicer.util.getModuleLogic("ProstateMetSeg")
            prostate.modelsDir = modelsDir
            try:
                self.assertIn("selftest-trained", [e.spec.id for e in prostate.modelEntries()])
            finally:
                prostate.modelsDir = None
        finally:
            widget.exit()
            widget.logic.modelsDir = None
        self.delayDisplay("Test passed")

    def test_case_segmentation_round_trips_through_the_bridge(self):
        self.delayDisplay("Round trip of a case segmentation through the MRML bridge")
        ct, labels, volume, segmentation = self._makeCase("LesionSegTrainingRoundTrip")
        self.assertEqual([info.name for info in LesionSegTrainingLogic().caseLabels(segmentation)], ["liver", "lesion"])

        back, table = lesionseg.mrml.labelmap_from_segmentation_node(segmentation, volume, {"liver": 1, "lesion": 2})
        np.testing.assert_array_equal(back.array, labels)
        self.assertEqual([(info.value, info.name) for info in table], [(1, "liver"), (2, "lesion")])
        np.testing.assert_allclose(back.origin, ct.origin, atol=1e-6)
        np.testing.assert_allclose(back.spacing, ct.spacing, atol=1e-6)
        self.delayDisplay("Test passed")
