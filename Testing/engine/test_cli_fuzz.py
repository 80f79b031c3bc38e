"""The command line as a careless or hostile user runs it: every refusal is one line, names the file, and harms nothing.

Each case of the table runs ``python -m lesionseg ...`` as a real child process and checks what the user sees and
what is left on disk:

- the documented exit status (2 bad input, 1 the work failed);
- one ``lesionseg COMMAND: error: ...`` line naming the file, and no Python traceback;
- every input byte for byte as before (hashes), no new output, no ``.part`` file anywhere.

The cases that fail within a second or two run in ``make test``; those that first load torch and MONAI, train or
segment are marked slow.  Random bytes under image names go through :func:`lesionseg.cli.main` in process with
hypothesis, where thousands of process starts would cost minutes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import resource
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.dicom_series import write_phantom
from support.tiny_models import phantom_ct, threshold_spec_dict, threshold_state, write_model_folder
from support.training_data import sphere_dataset_folder

from lesionseg.cli import main
from lesionseg.errors import describe, failure_line
from lesionseg.io import read_image, write_image

REPO = Path(__file__).resolve().parents[2]
UNWRITABLE = Path("/sys")  # sysfs refuses new files even to root, so the check is real where tests run as root


def _unwritable() -> bool:
    try:
        (UNWRITABLE / ".lesionseg-probe").touch()
    except OSError:
        return UNWRITABLE.is_dir()
    return False


@dataclass(frozen=True)
class Case:
    """One careless or hostile command line: ``{in}`` and ``{out}`` stand for the workspace's two folders."""

    name: str
    argv: tuple[str, ...]
    status: int
    names: str  # what the one-line message must mention (the file at fault, with {in}/{out} filled in)
    slow: bool = False
    file_size_limit: int | None = None  # bytes; simulates a full disk (RLIMIT_FSIZE, SIGXFSZ ignored: EFBIG)
    needs_unwritable: bool = False
    extra: tuple[str, ...] = field(default=())


RT = ("rtstruct", "--reference", "{in}/dcm", "--seg", "{in}/seg.nii.gz")
DSEG = ("dicomseg", "--reference", "{in}/dcm", "--seg", "{in}/seg.nii.gz")
EVAL = ("evaluate", "--pred", "{in}/seg.nii.gz", "--ref", "{in}/seg.nii.gz")
TRAIN = ("train", "--dataset", "{in}/dataset", "--device", "cpu", "--epochs", "1")


def seg(given: str, output: str, *more: str, model: str = "{in}/model") -> tuple[str, ...]:
    """``lesionseg segment`` of ``given`` into ``output`` on the CPU."""
    return ("segment", "--model", model, "--device", "cpu", "--input", given, "--output", output, *more)


def unwritable(name: str, argv: tuple[str, ...]) -> Case:
    """A command line whose output lies in a place no one may write: refused, naming that place."""
    return Case(name, argv, 2, str(UNWRITABLE), needs_unwritable=True)


CASES = [
    # Never overwrite the user's data.
    Case("segment output is its input", seg("{in}/ct.nrrd", "{in}/ct.nrrd"), 2, "ct.nrrd"),
    Case(
        "segment output is its input, even with --overwrite",
        seg("{in}/ct.nrrd", "{in}/ct.nrrd", "--overwrite"),
        2,
        "ct.nrrd",
    ),
    Case(
        "segment output is a link to its input",
        seg("{in}/ct.nrrd", "{out}/link.nrrd", "--overwrite"),
        2,
        "link.nrrd",
    ),
    Case(
        "segment output is a hard link to its input",
        seg("{in}/ct.nrrd", "{out}/hard.nrrd", "--overwrite"),
        2,
        "hard.nrrd",
    ),
    Case("segment output inside the input DICOM folder", seg("{in}/dcm", "{in}/dcm/seg.nii.gz"), 2, "{in}/dcm"),
    Case("segment output is the model folder", seg("{in}/ct.nrrd", "{in}/model/x.nrrd"), 2, "{in}/model"),
    Case("segment over an earlier result", seg("{in}/ct.nrrd", "{out}/earlier.nii.gz"), 2, "earlier.nii.gz"),
    Case(
        "rtstruct output is a slice of its reference",
        (*RT, "--output", "{in}/dcm/CT0002.dcm", "--overwrite"),
        2,
        "CT0002.dcm",
    ),
    Case("rtstruct output inside its reference folder", (*RT, "--output", "{in}/dcm/rs.dcm"), 2, "{in}/dcm"),
    Case("rtstruct output is its label map", (*RT, "--output", "{in}/seg.nii.gz", "--overwrite"), 2, "seg.nii.gz"),
    Case("rtstruct over an earlier result", (*RT, "--output", "{out}/earlier.dcm"), 2, "earlier.dcm"),
    Case("dicomseg output inside its reference folder", (*DSEG, "--output", "{in}/dcm/seg.dcm"), 2, "{in}/dcm"),
    Case("dicomseg over an earlier result", (*DSEG, "--output", "{out}/earlier.dcm"), 2, "earlier.dcm"),
    Case("evaluate output is its prediction", (*EVAL, "--output", "{in}/seg.nii.gz"), 2, "seg.nii.gz"),
    Case("evaluate over earlier metrics", (*EVAL, "--output", "{out}/earlier.json"), 2, "earlier.json"),
    Case("evaluate output is a folder", (*EVAL, "--output", "{out}/folder.json"), 2, "folder.json"),
    Case(
        "evaluate report folder is a file", (*EVAL, "--output", "{out}/m.json", "--report", "{out}/afile"), 2, "afile"
    ),
    Case(
        "dicom convert into its input folder", ("dicom", "convert", "{in}/dcm", "-o", "{in}/dcm/nifti"), 2, "{in}/dcm"
    ),
    Case("dicom convert into a file", ("dicom", "convert", "{in}/dcm", "-o", "{out}/afile"), 2, "afile"),
    Case(
        "dicom convert into a folder with results",
        ("dicom", "convert", "{in}/dcm", "-o", "{out}/results"),
        2,
        "results",
    ),
    Case("train over an existing model folder", (*TRAIN, "--output", "{in}/model"), 2, "{in}/model"),
    Case("train into its dataset folder", (*TRAIN, "--output", "{in}/dataset/model"), 2, "{in}/dataset"),
    Case(
        "train with both --resume and --overwrite",
        (*TRAIN, "--output", "{out}/run", "--resume", "--overwrite"),
        2,
        "--overwrite",
    ),
    Case(
        "nnU-Net export into its dataset",
        ("dataset", "export-nnunet", "{in}/dataset", "--output", "{in}/dataset/raw", "--id", "501"),
        2,
        "{in}/dataset",
    ),
    Case("demo into a file", ("demo", "--output", "{out}/afile"), 2, "afile"),
    Case("demo into a folder of someone's results", ("demo", "--output", "{out}/results"), 2, "results"),
    # Outputs that cannot be written: refused before any work.
    Case("segment output is a folder", seg("{in}/ct.nrrd", "{out}/folder.nrrd"), 2, "folder.nrrd"),
    Case("segment output under a file", seg("{in}/ct.nrrd", "{out}/afile/x.nrrd"), 2, "afile"),
    unwritable("segment output in a read-only place", seg("{in}/ct.nrrd", f"{UNWRITABLE}/x.nrrd")),
    unwritable("rtstruct output in a read-only place", (*RT, "--output", f"{UNWRITABLE}/lesionseg/rs.dcm")),
    unwritable("train output in a read-only place", (*TRAIN, "--output", f"{UNWRITABLE}/model")),
    Case("segment output of unknown type", seg("{in}/ct.nrrd", "{out}/x.txt"), 2, "x.txt"),
    # Inputs that are missing, garbage or cut short.
    Case("segment a missing image", seg("{in}/nothing.nrrd", "{out}/a.nrrd"), 2, "nothing.nrrd"),
    Case("segment a garbage NRRD", seg("{in}/garbage.nrrd", "{out}/a.nrrd"), 2, "garbage.nrrd"),
    Case("segment a truncated NIfTI", seg("{in}/truncated.nii.gz", "{out}/a.nrrd"), 2, "truncated.nii.gz"),
    Case("segment an empty NIfTI", seg("{in}/empty.nii.gz", "{out}/a.nrrd"), 2, "empty.nii.gz"),
    Case("segment a garbage MetaImage", seg("{in}/garbage.mha", "{out}/a.nrrd"), 2, "garbage.mha"),
    Case("segment a text file", seg("{in}/notes.txt", "{out}/a.nrrd"), 2, "notes.txt"),
    Case("info on a truncated NRRD", ("info", "{in}/truncated.nrrd"), 2, "truncated.nrrd"),
    Case(
        "rtstruct with a garbage label map",
        ("rtstruct", "--reference", "{in}/dcm", "--seg", "{in}/garbage.nrrd", "--output", "{out}/rs.dcm"),
        2,
        "garbage.nrrd",
    ),
    Case(
        "rtstruct on a missing reference",
        ("rtstruct", "--reference", "{in}/nodcm", "--seg", "{in}/seg.nii.gz", "--output", "{out}/rs.dcm"),
        2,
        "nodcm",
    ),
    Case(
        "evaluate a garbage prediction",
        ("evaluate", "--pred", "{in}/garbage.nrrd", "--ref", "{in}/seg.nii.gz", "--output", "{out}/m.json"),
        2,
        "garbage.nrrd",
    ),
    Case(
        "train on a missing dataset",
        ("train", "--dataset", "{in}/nodata", "--output", "{out}/run2"),
        2,
        "nodata",
        slow=True,  # torch and MONAI load before the dataset is read
    ),
    # Models that cannot be loaded: slow, torch and MONAI load first.
    Case(
        "segment with a model that is not a zip",
        seg("{in}/ct.nrrd", "{out}/a.nrrd", model="{in}/notzip.zip"),
        2,
        "notzip.zip",
        slow=True,
    ),
    Case(
        "segment with weights that do not fit the spec",
        seg("{in}/ct.nrrd", "{out}/a.nrrd", model="{in}/badmodel"),
        2,
        "badmodel",
        slow=True,
    ),
    Case(
        "resume from a damaged checkpoint",
        (*TRAIN[:-2], "--epochs", "2", "--output", "{out}/damaged", "--resume"),
        2,
        "checkpoint_latest.pt",
        slow=True,
    ),
    Case(
        "segment onto a full disk",
        seg("{in}/ct.nrrd", "{out}/full.nrrd"),
        1,
        "full.nrrd",
        slow=True,
        file_size_limit=300,
    ),
]


def _hashes(folder: Path) -> dict[str, str]:
    # A model folder's .openvino/ is the compiled-network cache segment keeps there by design (verified by key and
    # hash on every use, rebuilt when wrong): not the user's data, so writing it is no change to an input.
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        for p in sorted(folder.rglob("*"))
        if not p.is_symlink() and ".openvino" not in p.relative_to(folder).parts
    }


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """Inputs a user has (``in``) and a results folder with earlier results and traps (``out``)."""
    root = tmp_path_factory.mktemp("fuzz")
    given, out = root / "in", root / "out"
    given.mkdir()
    out.mkdir()
    write_model_folder(given / "model", threshold_spec_dict(spacing=None, roi=(32, 32, 32)), threshold_state())
    bad = threshold_spec_dict(spacing=None, roi=(32, 32, 32))
    bad["network"]["parameters"]["init_filters"] = 4  # the weights were saved from a network with 2
    write_model_folder(given / "badmodel", bad, threshold_state())
    write_image(phantom_ct(), given / "ct.nrrd")
    write_phantom(given / "dcm")
    reference = read_image(given / "dcm")
    write_image(reference.with_array((reference.array > -600).astype(np.uint8)), given / "seg.nii.gz")
    sphere_dataset_folder(given / "dataset", cases=2)  # trainable: without the guards, train would overwrite
    (given / "garbage.nrrd").write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 9 9\n\n\x00\x01")
    (given / "garbage.mha").write_bytes(b"ObjectType = Image\nNDims = 3\nElementDataFile = LOCAL\n\x07")
    good_gz = (given / "seg.nii.gz").read_bytes()
    (given / "truncated.nii.gz").write_bytes(good_gz[: len(good_gz) // 2])
    (given / "truncated.nrrd").write_bytes((given / "ct.nrrd").read_bytes()[:400])
    (given / "empty.nii.gz").write_bytes(b"")
    (given / "notes.txt").write_text("not an image\n")
    (given / "notzip.zip").write_bytes(b"PK\x03\x04 this is not a zip archive")

    (out / "earlier.nii.gz").write_bytes(good_gz)
    (out / "earlier.dcm").write_bytes(b"an earlier RTSTRUCT the user keeps")
    (out / "earlier.json").write_text("{}\n")
    (out / "folder.nrrd").mkdir()
    (out / "folder.json").mkdir()
    (out / "afile").write_text("a file where a folder is expected\n")
    (out / "results").mkdir()
    (out / "results" / "keep.nii.gz").write_bytes(good_gz)
    (out / "link.nrrd").symlink_to(given / "ct.nrrd")
    os.link(given / "ct.nrrd", out / "hard.nrrd")
    (out / "damaged").mkdir()
    (out / "damaged" / "checkpoint_latest.pt").write_bytes((given / "model" / "spec.json").read_bytes()[:100])
    return {"in": given, "out": out}


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def run_case(case: Case, paths: dict[str, Path], python: str = sys.executable, pythonpath: str | None = None):
    """Run ``case`` as a child process; returns (CompletedProcess, problems found: empty when clean)."""
    fill = {"in": str(paths["in"]), "out": str(paths["out"])}
    argv = [arg.format(**fill) for arg in case.argv]
    before = {name: _hashes(folder) for name, folder in paths.items()}
    models = str(paths["in"].parent / "models")
    env = {**os.environ, "PYTHONPATH": pythonpath or str(REPO), "LESIONSEG_MODELS_DIR": models}
    done = subprocess.run(
        [python, "-m", "lesionseg", *argv],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=paths["out"],
        preexec_fn=_limit_file_size(case.file_size_limit) if case.file_size_limit else None,
    )
    problems = []
    if done.returncode != case.status:
        problems.append(f"exit status {done.returncode}, expected {case.status}")
    if "Traceback" in done.stderr:
        problems.append("a traceback on stderr")
    lines = [line.strip() for line in done.stderr.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    if len(errors) != 1 or not lines or lines[-1] != errors[0] or not errors[0].startswith(f"lesionseg {argv[0]}: "):
        problems.append("not one 'lesionseg COMMAND: error:' line at the end")
    elif case.names.format(**fill) not in errors[0]:
        problems.append(f"the message does not name {case.names.format(**fill)}")
    after = {name: _hashes(folder) for name, folder in paths.items()}
    if after["in"] != before["in"]:
        changed = set(after["in"].items()) ^ set(before["in"].items())
        problems.append(f"inputs changed: {sorted({name for name, _ in changed})[:3]}")
    if after["out"] != before["out"]:
        changed = set(after["out"].items()) ^ set(before["out"].items())
        problems.append(f"results folder changed: {sorted({name for name, _ in changed})[:3]}")
    return done, problems


def _cases(slow: bool) -> list:
    return [
        pytest.param(case, id=case.name.replace(" ", "_"), marks=[pytest.mark.slow] if case.slow else [])
        for case in CASES
        if case.slow == slow
    ]


def _skip_unrunnable(case: Case) -> None:
    if case.needs_unwritable and not _unwritable():
        pytest.skip(f"{UNWRITABLE} is writable here; no read-only place to test with")


def test_careless_command_lines_are_refused_in_one_line_and_harm_nothing(workspace):
    """The fast cases, four child processes at a time: the table is checked as a whole, each case reported."""
    cases = [c for c in CASES if not c.slow and (not c.needs_unwritable or _unwritable())]
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(lambda case: run_case(case, workspace), cases))
    failures = {
        case.name: (problems, done.stderr[-600:])
        for case, (done, problems) in zip(cases, outcomes, strict=True)
        if problems
    }
    assert not failures, json.dumps(failures, indent=1)
    assert len(cases) >= 35


@pytest.mark.parametrize("case", _cases(slow=True))
def test_failures_after_loading_or_working_are_one_line_and_leave_nothing(case, workspace):
    _skip_unrunnable(case)
    done, problems = run_case(case, workspace)
    assert not problems, (problems, done.stderr[-2000:])
    assert not list(workspace["out"].rglob("*.part*")), "a half-written file was left behind"


@pytest.mark.slow
def test_next_run_removes_what_a_killed_write_left_and_keeps_other_files(workspace, tmp_path):
    out = tmp_path / "result.nii.gz"
    stale = tmp_path / ".result.k3j_x9q2.part.nii.gz"  # the name atomic_path gives; left by a SIGKILL
    other = tmp_path / ".result.notes.part.txt"
    stale.write_bytes(b"half a labelmap")
    other.write_text("not ours")
    done = subprocess.run(
        [sys.executable, "-m", "lesionseg", "segment", "--model", str(workspace["in"] / "model"), "--device", "cpu"]
        + ["--input", str(workspace["in"] / "ct.nrrd"), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.is_file() and not stale.exists() and other.exists()


def test_verbose_keeps_the_traceback_for_a_developer(workspace, capsys):
    args = ["segment", "--model", str(workspace["in"] / "model"), "--input", str(workspace["in"] / "garbage.nrrd")]
    assert main(["--verbose", *args, "--output", str(workspace["out"] / "v.nrrd")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("lesionseg segment: error: cannot read")


def test_help_documents_the_exit_statuses(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "exit status: 0 done; 1 the work failed" in out and "2 bad input" in out


@pytest.mark.parametrize(
    ("error", "status", "words"),
    [
        (OSError(28, "No space left on device", "/data/seg.nii.gz"), 1, "no space left to write /data/seg.nii.gz"),
        (PermissionError(13, "Permission denied", "/data/seg.nii.gz"), 2, "Permission denied: /data/seg.nii.gz"),
        (OSError(30, "Read-only file system", "/mnt/cd/x.dcm"), 2, "Read-only file system: /mnt/cd/x.dcm"),
        (IsADirectoryError(21, "Is a directory", "/tmp/x.part", None, "/data/out"), 2, "/data/out is a folder"),
        (OSError(5, "Input/output error", "/data/a.nrrd"), 1, "Input/output error: /data/a.nrrd"),
        (RuntimeError("boom\nsecond line"), 1, "unexpected RuntimeError: boom (run with --verbose"),
    ],
)
def test_each_kind_of_failure_becomes_one_line_and_its_exit_status(error, status, words):
    message, code = describe(error)
    assert (code, "\n" in message) == (status, False) and words in message


def test_a_background_job_failure_is_shown_as_its_last_line_never_a_traceback():
    stderr = 'Traceback (most recent call last):\n  File "x", line 1\nValueError: the CT is 2D\n'
    assert failure_line(None, stderr) == "ValueError: the CT is 2D"
    assert failure_line("lesionseg segment: error: a.nrrd is a folder", stderr) == "a.nrrd is a folder"
    assert failure_line(None, "", "the process exited with status 9") == "the process exited with status 9"
    progress = "INFO: epoch 3 of 40\nWARNING: 8-bit input\n"  # a killed run's last words are not its cause
    assert failure_line(None, progress, "the process ended unexpectedly") == "the process ended unexpectedly"


IMAGE_NAMES = ["x.nrrd", "x.nii", "x.nii.gz", "x.mha", "x.seg.nrrd"]
HEADERS = [b"", b"NRRD0004\n", b"\x1f\x8b\x08\x00", b"ObjectType = Image\nNDims = 3\n", b"\x5c\x01\x00\x00"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(IMAGE_NAMES), head=st.sampled_from(HEADERS), body=st.binary(max_size=600))
def test_any_bytes_under_an_image_name_give_one_line_naming_the_file(tmp_path, name, head, body):
    path = tmp_path / name
    path.write_bytes(head + body)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(["info", str(path)])
    lines = err.getvalue().strip().splitlines()
    if status == 0:
        return  # bytes that happen to decode to an image are no error
    assert status == 2 and lines and lines[-1].startswith("lesionseg info: error: "), err.getvalue()
    assert name in lines[-1] and "Traceback" not in err.getvalue()
