"""The command line as a user runs it: a real child process of this Python, its output captured as text."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def python(*args: str, timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python ARGS`` with the interpreter running the tests (so the child imports the same lesionseg)."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def lesionseg(*args: str, timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m lesionseg ARGS``."""
    return python("-m", "lesionseg", *args, timeout=timeout, cwd=cwd)
