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
