"""What a user of a fresh Slicer 5.10 can do before LesionSeg installs its Python packages.

Slicer 5.10's Python bundles numpy, scipy, SimpleITK, pydicom 2.4.4 and a few others, but none of torch,
monai, nibabel, pynrrd, jsonschema, scikit-image, highdicom... The modules install those only when the user
clicks Segment, Train or Save case. Everything before that (opening the modules, comparing with a reference,
the lesion table, exporting, listing a dataset) must work on the bundled packages, or say what to install.

The parent test prepares real data with every package at hand, then runs this file as a script in a child
Python that cannot import the missing packages (an import blocker, put in place before anything else is
imported) and that reads DICOM with pydicom 2.4.4. The child builds a real slicer-core scene, runs each
action, and prints one JSON line per action.

The module files import Slicer's framework (ScriptedLoadableModule, qt, parameter node wrappers), which
Testing/slicer_framework/ assembles from Slicer's released files; this child keeps to a fresh install's packages
instead. It runs the modules' top-level imports minus Slicer's own modules, and runs each logic class's own code
from the module file, on a stand-in base class in place of ScriptedLoadableModuleLogic.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

# Top-level names a fresh Slicer 5.10 cannot import (its bundled packages are numpy, scipy, SimpleITK, pydicom
# 2.4.4, pillow, requests, packaging, six, retrying, dicomweb-client, and VTK/slicer).
ABSENT = (
    "torch",
    "monai",
    "einops",
    "safetensors",
    "yaml",
    "nibabel",
    "nrrd",
    "jsonschema",
    "skimage",
    "highdicom",
    "matplotlib",
    "tensorboard",
    "pylibjpeg",
    "gdcm",
)

# Actions that may legitimately refuse before the install, with the words their message must hold. When the
# refusal comes from a failed import, the message must also name that package (see _acceptable).
NEEDS_PACKAGE = {
    "SpleenSeg: list the models": ("install",),
    "ProstateMetSeg: list the models": ("install",),
    "SpleenSeg: export DICOM SEG": ("highdicom", "install"),
}
# pip names of the packages whose import name differs
PIP_NAMES = {"yaml": "pyyaml", "nrrd": "pynrrd", "skimage": "scikit-image"}

# Modules only Slicer's app has: the module files' imports of these are left out in the child.
APP_ONLY = (
    "qt",
    "ctk",
    "slicer.i18n",
    "slicer.parameterNodeWrapper",
    "slicer.ScriptedLoadableModule",
    "LesionSegLib.modulewidget",
    "LesionSegLib.widgets",
)


# =============================================================================================== the child


class _AbsentPackages:
    """A meta path finder that makes ``ABSENT`` packages unimportable, as in a fresh Slicer."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {name!r} (not bundled with Slicer 5.10)", name=name)
        return None


def _install_blocker(repo: Path) -> None:
    import importlib.util

    already = sorted(m for m in sys.modules if m.split(".")[0] in ABSENT)
    assert not already, f"imported before the blocker: {already}"
    sys.meta_path.insert(0, _AbsentPackages())
    # importlib.util.find_spec asks the finders too; in a fresh Slicer it answers None for these packages.
    real_find_spec = importlib.util.find_spec

    def find_spec(name, package=None):
        if name.split(".")[0] in ABSENT:
            return None
        return real_find_spec(name, package)

    importlib.util.find_spec = find_spec
    sys.path[:0] = [str(Path(sys.prefix) / "slicer-5.10"), str(repo)]


def _problem_site(error: BaseException) -> str:
    """file:line of the innermost frame in LesionSeg's own code, and its source line."""
    import linecache
    import traceback

    here = Path(__file__).resolve()
    repo = here.parents[2]
    site = ""
    for frame in traceback.extract_tb(error.__traceback__):
        path = Path(frame.filename).resolve()
        if path != here and repo in path.parents and ".venv" not in path.parts:
            line = linecache.getline(frame.filename, frame.lineno).strip()
            site = f"{path.relative_to(repo)}:{frame.lineno}: {line}"
    return site


class _Recorder:
    def __init__(self) -> None:
        self.results: list[dict] = []

    def __call__(self, name: str, action) -> object:
        import traceback

        started = time.monotonic()
        try:
            value = action()
        except Exception as error:  # every failure is reported, the next action still runs
            # A refusal raised "from" the failed import reports that import's package and place.
            cause = error.__cause__ if isinstance(error.__cause__, ImportError) else error
            row = {
                "action": name,
                "ok": False,
                "error": f"{type(error).__name__}: {error}",
                "missing": getattr(cause, "name", None) if isinstance(cause, ImportError) else None,
                "where": _problem_site(cause),
                "traceback": "".join(traceback.format_exception(cause))[-3000:],
            }
            value = None
        else:
            row = {"action": name, "ok": True, "error": ""}
        row["seconds"] = round(time.monotonic() - started, 3)
        print(json.dumps(row), flush=True)
        self.results.append(row)
        return value


def _module_imports(repo: Path, module: str, namespace: dict) -> None:
    """Run the module file's top-level imports (the app's modules left out) as Slicer does when it loads the
    module, and the LesionSeg imports of the app-side LesionSegLib files it uses; the names go into
    ``namespace``. Every statement runs, so that one failure does not hide the next; the first is raised."""
    import ast
    import importlib

    def app_only(node: ast.AST) -> bool:
        names = [node.module] if isinstance(node, ast.ImportFrom) else [alias.name for alias in node.names]
        return any(n == app or n.startswith(app + ".") for n in names for app in APP_ONLY)

    errors: list[Exception] = []
    source = repo / module / f"{module}.py"
    namespace.update(__file__=str(source), __name__=module)
    for node in ast.parse(source.read_text(encoding="utf-8"), filename=str(source)).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)) and app_only(node):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.Try, ast.If, ast.Assign)):
            try:
                exec(compile(ast.Module([node], []), str(source), "exec"), namespace)
            except Exception as error:
                errors.append(error)
    # The app-side files import qt, which this Python lacks; their own engine imports must load all the same.
    pending, seen = [f"{module}/{module}"], set()
    while pending:
        path = repo / (pending.pop().replace(".", "/") + ".py")
        for node in ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body:
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            names = [node.module] if isinstance(node, ast.ImportFrom) else [alias.name for alias in node.names]
            for name in names:
                if name.split(".")[0] not in ("lesionseg", "LesionSegLib") or name in seen:
                    continue
                seen.add(name)
                if app_only(node):
                    pending.append(name)
                    continue
                try:
                    imported = importlib.import_module(name)
                    for alias in node.names if isinstance(node, ast.ImportFrom) else []:
                        getattr(imported, alias.name)
                except Exception as error:
                    errors.append(error)
    if errors:
        raise errors[0]


class _ScriptedLoadableModuleLogic:
    """Stands in for the app's base class, whose parameter node needs the app."""

    def getParameterNode(self):
        raise RuntimeError("the module's parameter node needs Slicer's app")


def _logic_class(repo: Path, module: str, namespace: dict) -> type:
    """``<module>Logic`` built from the module file's own code, on the names its imports bound."""
    import ast

    source = repo / module / f"{module}.py"
    tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    names = dict(namespace)
    names.update(_=lambda text: text, translate=lambda _context, text: text)
    names["ScriptedLoadableModuleLogic"] = _ScriptedLoadableModuleLogic
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    for node in classes:  # annotations name the parameter node class; it needs the app's wrapper
        names.setdefault(node.name, type(node.name, (), {}))
    (logic,) = [node for node in classes if node.name == f"{module}Logic"]
    exec(compile(ast.Module([logic], []), str(source), "exec"), names)
    cls = names[f"{module}Logic"]
    # Its __init__ reads the app's temporary folder and startup environment; the defaults stand.
    return cls.__new__(cls)


def child_main(inputs_path: str) -> int:
    inputs = json.loads(Path(inputs_path).read_text(encoding="utf-8"))
    repo = Path(inputs["repo"])
    _install_blocker(repo)

    from types import SimpleNamespace

    import numpy as np
    import pydicom

    assert pydicom.__version__ == "2.4.4", f"pydicom {pydicom.__version__} from {pydicom.__file__}"
    for name in ABSENT:
        try:
            __import__(name)
        except ModuleNotFoundError:
            pass
        else:
            raise AssertionError(f"{name} is importable in the fresh-Slicer child")
    import importlib.util

    assert importlib.util.find_spec("highdicom") is None

    import slicer

    import lesionseg.mrml
    from lesionseg.image import Image

    lesionseg.mrml.ensure_segmentation_converters()
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene  # the app's scene, which the modules use for new table nodes
    record = _Recorder()
    out = Path(inputs["out"])

    modules: dict[str, dict] = {m: {} for m in ("SpleenSeg", "ProstateMetSeg", "LesionSegTraining")}
    for m, namespace in modules.items():
        record(f"{m}: load the module's imports", lambda m=m, n=namespace: _module_imports(repo, m, n))
    # The logic classes are built even when an import failed, so that the actions below still report.
    logics = {m: record(f"{m}: logic class", lambda m=m: _logic_class(repo, m, modules[m])) for m in modules}

    geometry = inputs["geometry"]
    ct = Image(np.load(inputs["ct"]), geometry["spacing"], geometry["origin"], np.array(geometry["direction"]))
    volume = lesionseg.mrml.volume_node_from_image(scene, ct, "CT")
    # What Slicer's DICOM loader stores on a CT it loaded, and its database's file look-up.
    volume.SetAttribute("DICOM.instanceUIDs", " ".join(inputs["instances"]))
    files = dict(zip(inputs["instances"], inputs["files"], strict=True))
    names = {int(k): v for k, v in inputs["labels"].items()}
    ai = lesionseg.mrml.segmentation_node_from_labelmap(
        scene, ct.with_array(np.load(inputs["ai"])), "CT AI", names, volume
    )
    reference = lesionseg.mrml.segmentation_node_from_labelmap(
        scene, ct.with_array(np.load(inputs["reference"])), "CT corrected", names, volume
    )
    plain = lesionseg.mrml.volume_node_from_image(scene, ct, "CT from NRRD")  # not from DICOM

    from LesionSegLib import comparison, export, lesions, segmenting

    for module in ("SpleenSeg", "ProstateMetSeg"):
        logic = logics.get(module)
        if logic is None:
            continue
        node = SimpleNamespace(
            inputVolume=None,
            outputSegmentation=ai,
            referenceSegmentation=reference,
            comparisonTable=None,
            lesionTable=None,
            modelId="",
            device="auto",
            exportFormat=export.RTSTRUCT,
            minLesionVolumeMm3=0.0,
            cropBody=False,
            lesionThreshold=0.0,
        )

        def describe(logic=logic, node=node):
            text = logic.setInputVolume(node, volume)
            assert "×" in text and node.inputVolume is volume, text

        def list_models(logic=logic, module=module):
            entries, problem = logic.listModels()
            if not entries:
                try:  # the import the list needed, which listModels turned into its message
                    logic.modelEntries()
                except ImportError as error:
                    raise RuntimeError(problem) from error
                raise RuntimeError(problem)
            lines = [segmenting.describe_entry(e) + segmenting.weights_problem(e) for e in entries]
            expected = "tiny-mets" if module == "ProstateMetSeg" else "tiny-spleen"
            assert any(line.startswith(expected) for line in lines), lines

        def buttons(logic=logic, node=node):
            # SegmentPanel.readiness, then the other buttons of SegmentationModuleWidget.buttonStates.
            states = [logic.segmentReadiness(node), (True, segmenting.packages_problem())]
            states += [logic.compareReadiness(node), logic.exportReadiness(node), logic.lesionTableReadiness(node)]
            assert all(isinstance(e, bool) and isinstance(r, str) for e, r in states), states
            assert logic.segmentReadiness(node)[0], logic.segmentReadiness(node)

        def panels(logic=logic):
            # ComparisonPanel.refreshMapping and ExportPanel.updateStatus for every format.
            comparison.default_segment_mapping(comparison.segment_names(ai), comparison.segment_names(reference))
            for fmt in export.FORMATS:
                for ct_node in (volume, plain):
                    logic.planExport(ct_node, ai, fmt, False, files.get)

        record(f"{module}: describe the input volume", describe)
        record(f"{module}: list the models", list_models)
        record(f"{module}: button states", buttons)
        record(f"{module}: mapping and export status", panels)

    spleen = logics.get("SpleenSeg")
    if spleen is not None:

        def compare():
            _table, rows = spleen.compareWithReference(ai, reference, None, volume, None, out / "comparison.csv")
            assert rows and all(0.0 <= row["dice"] <= 1.0 for row in rows), rows
            # No input volume chosen: the CT the segmentations name is the grid.
            _table, again = spleen.compareWithReference(ai, reference, {"organ": "organ"})
            assert again[0]["dice"] == rows[0]["dice"], (again, rows)

        def export_as(fmt: str, route: str, lookup=files.get, folder: str = ""):
            plan = spleen.planExport(volume, ai, fmt, False, lookup)
            if not plan.possible:
                raise RuntimeError(plan.problem)
            assert plan.route == route, plan
            folder = out / (folder or fmt.replace(" ", "_"))
            written = spleen.exportSegmentation(plan, volume, ai, folder, False, lambda _text: None)
            assert all(Path(p).is_file() for p in written), written

        record("SpleenSeg: compare with reference", compare)
        record("SpleenSeg: export RTSTRUCT", lambda: export_as(export.RTSTRUCT, export.ROUTE_ENGINE_RTSTRUCT))
        # The same CT stored JPEG Lossless in the database: pydicom 2.4 cannot decode it without pylibjpeg or gdcm.
        jpeg_lossless = dict(zip(inputs["instances"], inputs["jpeg_lossless_files"], strict=True)).get
        record(
            "SpleenSeg: export RTSTRUCT on a JPEG Lossless series",
            lambda: export_as(export.RTSTRUCT, export.ROUTE_ENGINE_RTSTRUCT, jpeg_lossless, "RTSTRUCT_JPEG"),
        )
        record("SpleenSeg: export DICOM SEG", lambda: export_as(export.DICOM_SEG, export.ROUTE_ENGINE_DICOMSEG))
        record("SpleenSeg: export .seg.nrrd", lambda: export_as(export.SEG_NRRD, export.ROUTE_SEG_NRRD))

    prostate = logics.get("ProstateMetSeg")
    if prostate is not None:
        tables = {}

        def lesion_table():
            tables["lesions"], rows = prostate.lesionTable(ai, volume, 0.0, None, out / "lesions.csv")
            assert len(rows) == 2, rows
            _table, big = prostate.lesionTable(ai, volume, 10_000.0, tables["lesions"])
            assert [row["segment"] for row in big] == ["organ"], big

        def click_row():
            # LesionTablePanel.onRowClicked: centre the slice views on the lesion.
            slice_node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
            slice_node.SetLayoutName("Red")
            position = lesions.lesion_position(tables["lesions"], 0)
            lesions.jump_to_lesion(scene, position)
            centre = slice_node.GetSliceToRAS()
            assert [round(centre.GetElement(i, 3), 3) for i in range(3)] == [round(v, 3) for v in position]

        record("ProstateMetSeg: lesion table", lesion_table)
        record("ProstateMetSeg: click a lesion row", click_row)

    training = logics.get("LesionSegTraining")
    if training is not None:
        folder = inputs["dataset"]
        new_folder = str(out / "new-dataset")
        node = SimpleNamespace(
            datasetFolder=folder,
            caseVolume=None,
            caseSegmentation=None,
            annotator="J. Chen",
            modelName="my-model",
            configPreset="",
            casesTable=None,
        )

        def presets():
            assert training.presets(), "no training preset"

        def describe_case():
            labels = training.caseLabels(reference)
            assert [info.name for info in labels] == list(names.values()), labels
            text = training.setCase(node, volume, reference)
            assert "segments:" in text, text

        def dataset_labels():
            assert training.datasetLabelNames("") == [] and training.datasetLabelNames(new_folder) == []
            assert training.datasetLabelNames(folder) == inputs["dataset_labels"]

        def describe_dataset():
            for path in ("", new_folder, folder):
                assert training.describeDataset(path)
            assert training.describeDataset(folder).startswith(f"{len(inputs['dataset_cases'])} cases")

        def cases_table():
            node.casesTable = training.casesTable(folder, node.casesTable)
            assert node.casesTable.GetNumberOfRows() == len(inputs["dataset_cases"])

        def buttons():
            running = False
            states = [
                training.saveCaseReadiness(node),
                training.removeCaseReadiness(node),
                training.trainReadiness(node, running),
                training.cancelReadiness(running),
                training.resumeReadiness(node, running),
            ]
            assert [enabled for enabled, _reason in states] == [True, True, True, False, True], states

        def remove_case():
            # Remove case asks for no package install first.
            training.removeCase(folder, inputs["dataset_cases"][-1], node.annotator)
            assert training.casesTable(folder, node.casesTable).GetNumberOfRows() == len(inputs["dataset_cases"]) - 1

        record("LesionSegTraining: presets", presets)
        record("LesionSegTraining: describe the case", describe_case)
        record("LesionSegTraining: dataset label names", dataset_labels)
        record("LesionSegTraining: describe the dataset", describe_dataset)
        record("LesionSegTraining: cases table", cases_table)
        record("LesionSegTraining: button states", buttons)
        record("LesionSegTraining: remove a case", remove_case)
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1]))


# ============================================================================================== the parent

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from support.slicer_modules import REPO  # noqa: E402

EXPECTED_ACTIONS = [
    *(f"{m}: load the module's imports" for m in ("SpleenSeg", "ProstateMetSeg", "LesionSegTraining")),
    *(f"{m}: logic class" for m in ("SpleenSeg", "ProstateMetSeg", "LesionSegTraining")),
    *(
        f"{m}: {action}"
        for m in ("SpleenSeg", "ProstateMetSeg")
        for action in ("describe the input volume", "list the models", "button states", "mapping and export status")
    ),
    "SpleenSeg: compare with reference",
    "SpleenSeg: export RTSTRUCT",
    "SpleenSeg: export RTSTRUCT on a JPEG Lossless series",
    "SpleenSeg: export DICOM SEG",
    "SpleenSeg: export .seg.nrrd",
    "ProstateMetSeg: lesion table",
    "ProstateMetSeg: click a lesion row",
    "LesionSegTraining: presets",
    "LesionSegTraining: describe the case",
    "LesionSegTraining: dataset label names",
    "LesionSegTraining: describe the dataset",
    "LesionSegTraining: cases table",
    "LesionSegTraining: button states",
    "LesionSegTraining: remove a case",
]


def _prepare(root: Path) -> Path:
    """Everything the child reads, made here with all packages: a CT as a DICOM series, two segmentations,
    a models folder with one model per module, and a dataset with cases."""
    from support.dicom_series import compress_files
    from support.training_data import sphere_case, sphere_dataset_folder

    from lesionseg.datasets import Dataset
    from lesionseg.dicom import write_ct_series
    from LesionSegLib.selftest import write_threshold_model

    ct, labels = sphere_case(3, size=24, spacing=2.0)
    ct = ct.with_array(ct.array.astype(np.int16))
    files = write_ct_series(ct, root / "ct", uid_seed="fresh-slicer")
    compressed = write_ct_series(ct, root / "ct-jpeg-lossless", uid_seed="fresh-slicer")
    compress_files(compressed, "JPEG-lossless")
    import pydicom

    instances = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    reference = labels.array.astype(np.uint8)
    ai = reference.copy()
    ai[:, :, :2] = 0  # a slightly different AI result, so the comparison has something to measure
    np.save(root / "ct.npy", ct.array)
    np.save(root / "ai.npy", ai)
    np.save(root / "reference.npy", reference)

    models = root / "models"
    write_threshold_model(models, "tiny-spleen", "spleen")
    write_threshold_model(models, "tiny-mets", "bone metastasis", threshold_hu=300)
    dataset = sphere_dataset_folder(root / "dataset", cases=2)
    cases = Dataset(dataset).active_cases()
    label_names = [name for value, name in sorted(Dataset(dataset).labels().items()) if value != 0]

    (root / "out").mkdir()
    inputs = {
        "repo": str(REPO),
        "out": str(root / "out"),
        "ct": str(root / "ct.npy"),
        "geometry": {"spacing": list(ct.spacing), "origin": list(ct.origin), "direction": ct.direction.tolist()},
        "instances": instances,
        "files": [str(f) for f in files],
        "jpeg_lossless_files": [str(f) for f in compressed],
        "ai": str(root / "ai.npy"),
        "reference": str(root / "reference.npy"),
        "labels": {"1": "organ", "2": "lesion"},
        "models": str(models),
        "dataset": str(dataset),
        "dataset_cases": cases,
        "dataset_labels": label_names,
    }
    path = root / "inputs.json"
    path.write_text(json.dumps(inputs), encoding="utf-8")
    return path


def _run_child(inputs: Path, root: Path) -> tuple[subprocess.CompletedProcess, dict[str, dict]]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.update(
        LESIONSEG_MODELS_DIR=json.loads(inputs.read_text())["models"], HOME=str(root / "home"), PYTHONNOUSERSITE="1"
    )
    process = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), str(inputs)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    results = {}
    for line in process.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            results[row["action"]] = row
    return process, results


def _acceptable(row: dict) -> bool:
    """Worked, or refused with a message that names what to install (and the package whose import failed)."""
    if row["ok"]:
        return True
    needs = NEEDS_PACKAGE.get(row["action"])
    message = row["error"].lower()
    if not needs or not all(word.lower() in message for word in needs):
        return False
    missing = (row.get("missing") or "").split(".")[0]
    return not missing or missing in message or PIP_NAMES.get(missing, missing) in message


@pytest.mark.slow
def test_a_fresh_slicer_opens_the_modules_compares_exports_and_lists_datasets_before_any_install(tmp_path):
    pytest.importorskip("slicer")
    if not (Path(sys.prefix) / "slicer-5.10" / "pydicom").is_dir():
        pytest.fail(f"{Path(sys.prefix) / 'slicer-5.10'} lacks Slicer 5.10's pydicom 2.4.4; run `make setup`")
    inputs = _prepare(tmp_path)
    process, results = _run_child(inputs, tmp_path)
    assert process.returncode == 0, process.stderr[-4000:]
    assert list(results) == EXPECTED_ACTIONS, process.stderr[-2000:]
    refused = {
        name: f"{row['error']} [import {row.get('missing')} at {row.get('where')}]"
        for name, row in results.items()
        if not _acceptable(row)
    }
    assert not refused, "\n".join(f"{name}: {why}" for name, why in refused.items())

    # What the exports wrote with pydicom 2.4.4 is real: a valid RTSTRUCT on the CT's series, and the
    # segmentation file.
    import pydicom
    from support.plastimatch import dciodvfy

    for folder in ("RTSTRUCT", "RTSTRUCT_JPEG"):
        (rtstruct,) = (tmp_path / "out" / folder).glob("*.dcm")
        written = pydicom.dcmread(rtstruct)
        assert written.Modality == "RTSTRUCT"
        assert sorted(roi.ROIName for roi in written.StructureSetROISequence) == ["lesion", "organ"]
        assert dciodvfy(rtstruct) == (0, [])
    assert list((tmp_path / "out" / "NRRD").glob("*.seg.nrrd"))
