"""``lesionseg worker``: a long-lived process answering segmentation requests on stdin (see lesionseg.jobs.worker)."""

from __future__ import annotations

import argparse

HELP = "keep models loaded and answer JSON requests on stdin"


def run(args: argparse.Namespace) -> int:
    from lesionseg.jobs.protocol import exit_on_terminate
    from lesionseg.jobs.worker import serve

    exit_on_terminate()  # a cancelled request leaves no half-written output
    return serve()
