"""``lesionseg worker``: a long-lived process answering segmentation requests on stdin (see lesionseg.jobs.worker)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("worker", help="keep models loaded and answer JSON requests on stdin")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import signal

    from lesionseg.commands.segment import _terminate_cleanly
    from lesionseg.jobs.worker import serve

    signal.signal(signal.SIGTERM, _terminate_cleanly)  # a cancelled request leaves no half-written output
    return serve()
