"""Process checks shared by the tests: whether a background job's process runs (Linux: it reads /proc), and a child
Python that lacks some packages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether the process runs; a zombie (ended, not yet reaped) counts as ended."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def python_without(missing: tuple[str, ...], code: str, timeout: float = 120) -> str:
    """The output of ``code`` run by a fresh child of this Python, in the repository root, where the ``missing``
    packages cannot be imported (as in a Slicer that does not bundle them). A child, because this test process has
    imported them already; a failed child fails the test with its stderr."""
    hide = "".join(f"sys.modules[{name!r}] = None\n" for name in missing)
    done = subprocess.run(
        [sys.executable, "-c", f"import sys\n{hide}{code}"],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"the child Python failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def segment_under_address_space_limit(model: Path, source: Path, output: Path, limit_bytes: int) -> None:
    """Run ``lesionseg segment`` (CPU, JSON-lines progress) in a child under a real ``ulimit -v`` of ``limit_bytes``,
    and check that the memory plan refused it: exit status 2, the figure, the bound and ``--crop-body`` named, no
    window computed and no output written."""
    import json
    import os
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    repo = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [sys.executable, "-m", "lesionseg", "segment", "--model", str(model), "--input", str(source),
         "--output", str(output), "--device", "cpu", "--progress", "jsonl"],
        capture_output=True, text=True, timeout=300, cwd=repo, preexec_fn=limit,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)},
    )  # fmt: skip
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert "GiB of memory" in run.stderr and "address-space limit" in run.stderr and "--crop-body" in run.stderr
    stages = [json.loads(line).get("stage") for line in run.stdout.splitlines() if line.startswith("{")]
    assert "inference" not in stages, "the refusal must come before any window is computed"
    assert not output.exists()
