"""The errors a user sees, and how any exception becomes one line and an exit status.

Exit statuses of every ``lesionseg`` command:

- 0: done;
- 1: the work failed (disk full, an input/output error, an unexpected error);
- 2: bad input: a missing or unreadable file, an option that cannot be right, an output that would replace an input
  or an earlier result without ``--overwrite``, an output that cannot be written;
- 130: interrupted.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterable
from pathlib import Path

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = (
    "exit status: 0 done; 1 the work failed (disk full, I/O error, unexpected error); 2 bad input (a missing or "
    "unreadable file, a wrong option, an output that would replace an input or, without --overwrite, an earlier "
    "result); 130 interrupted. Errors are one line; --verbose adds the full traceback."
)

_NO_SPACE = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NOT_ALLOWED = {errno.EACCES, errno.EPERM, errno.EROFS}


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2, no traceback."""


class UnreadableFileError(UserError):
    """An input file that exists but cannot be decoded (truncated, garbage, another format)."""


def _os_path(error: OSError) -> str:
    # os.replace(tmp, target) reports both; the target is the one the user named.
    name = error.filename2 if error.filename2 is not None else error.filename
    return "" if name is None else os.fsdecode(name) if isinstance(name, bytes) else str(name)


def describe(error: BaseException) -> tuple[str, int]:
    """One line naming the problem, the file and the fix, and the exit status for ``error``."""
    if isinstance(error, UserError):
        return str(error), EXIT_BAD_INPUT
    if isinstance(error, OSError) and error.errno is not None and error.strerror:
        path = _os_path(error)
        where = f" {path}" if path else ""
        if error.errno in _NO_SPACE:
            return (
                f"no space left to write{where} (the disk is full or a file size limit was reached); "
                "free some space or write to another disk",
                EXIT_FAILURE,
            )
        if error.errno in _NOT_ALLOWED:
            return f"{error.strerror}:{where}; check its permissions, or use a folder you may write to", EXIT_BAD_INPUT
        if isinstance(error, IsADirectoryError):
            return f"{path or 'the path'} is a folder; name a file inside it instead", EXIT_BAD_INPUT
        if isinstance(error, NotADirectoryError):
            return f"{path or 'the path'}: part of this path is a file, not a folder; fix the path", EXIT_BAD_INPUT
        if isinstance(error, FileNotFoundError):
            return f"no such file or folder: {path}", EXIT_BAD_INPUT
        return f"{error.strerror}:{where}", EXIT_FAILURE
    if isinstance(error, FileNotFoundError | ValueError):
        return str(error), EXIT_BAD_INPUT  # the engine's own messages name the file and the fix
    if isinstance(error, MemoryError):
        return "out of memory; close other programs, or try --crop-body or a smaller input", EXIT_FAILURE
    text = first_line(error, "")
    return (
        f"unexpected {type(error).__name__}{': ' + text if text else ''} (run with --verbose for the traceback, "
        "and please report it)",
        EXIT_FAILURE,
    )


def first_line(error: BaseException, default: str | None = None) -> str:
    """The telling line of an error's message (SimpleITK puts its source location first, the reason after)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("Exception thrown in SimpleITK")] or lines
    if not lines:
        return type(error).__name__ if default is None else default
    line = lines[0].removeprefix("sitk::ERROR: ")
    if len(line) > 160 and ". " in line[:160]:
        line = line[: line.index(". ") + 1]  # torch explains at length; the first sentence names the problem
    return line


def unreadable(path: str | Path, what: str, error: BaseException) -> UnreadableFileError:
    """The error for an input that exists but cannot be decoded; raise it ``from error``."""
    reason = first_line(error)
    return UnreadableFileError(
        f"cannot read {path} as {what} ({reason}); check that the file is complete and really is {what}"
    )


_PROGRESS_RECORD = re.compile(r"^(DEBUG|INFO|WARNING): ")  # the worker's own log lines (cli's logging format)
_PYTHON_WARNING = re.compile(r"^\S.*:\d+: \w*Warning: ")  # warnings.warn's first line (its source line follows)


def exit_cause(stderr_lines: Iterable[str]) -> str:
    """The line that says why a background process ended, or "" when its stderr does not say.

    Only what it wrote after its last progress record counts: a process killed mid-run (the out-of-memory
    killer's SIGKILL) leaves its last progress line ("INFO: compiling the network ...") as its last word, which is
    not the cause. Python warnings and indented lines (tracebacks' frames) are skipped; a fatal error
    (segmentation fault, abort) is named by its ``Fatal Python error:`` line when there is one.
    """
    after: list[str] = []
    for line in stderr_lines:
        if _PROGRESS_RECORD.match(line):
            after.clear()
        elif line.strip():
            after.append(line.rstrip())
    fatal = [line for line in after if line.startswith("Fatal Python error:")]
    if fatal:
        return fatal[0].strip()
    said = [line for line in after if not line[:1].isspace() and not _PYTHON_WARNING.match(line)]
    return said[-1].strip() if said else ""


def unexpected_exit(returncode: int | None) -> str:
    """How a process that ended without saying why ended: its exit status, and what a SIGKILL most often means."""
    if returncode == -9:  # SIGKILL (POSIX; signal.SIGKILL is missing on Windows)
        return (
            f"ended unexpectedly (exit status {returncode}: it was killed, most often because the computer ran out "
            "of memory)"
        )
    return f"ended unexpectedly (exit status {returncode})"


def failure_line(error_text: str | None, stderr_text: str | None = None, default: str = "the process failed") -> str:
    """One line saying why a background job failed, for a dialog: never a traceback, never a progress line.

    The job's error event carries the one line the command line prints; without one (a crash before the
    command started, a killed interpreter) the line of its stderr that names the error (:func:`exit_cause`).
    """
    for text in (error_text, stderr_text):
        line = exit_cause((text or "").splitlines())
        if line:
            if line.startswith("lesionseg ") and ": error: " in line:
                line = line.split(": error: ", 1)[1]
            return line
    return default
