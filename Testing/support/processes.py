"""Process checks shared by the background-job tests (Linux: they read /proc)."""

from __future__ import annotations


def alive(pid: int) -> bool:
    """Whether the process runs; a zombie (ended, not yet reaped) counts as ended."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
