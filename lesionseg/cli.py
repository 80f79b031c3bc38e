"""The ``lesionseg`` command line.  Each subcommand lives in its own module (see ``COMMAND_MODULES``)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Sequence
from types import ModuleType

from lesionseg import __version__
from lesionseg.errors import EXIT_BAD_INPUT, EXIT_CODES_HELP, EXIT_INTERRUPTED, describe

# One module a subcommand, named for it. Each says what it does in ``HELP`` (one line for the command list) and,
# if it needs more, ``DESCRIPTION`` (its own --help); ``add_arguments(parser)`` adds its options, where it has any,
# and ``run(args)`` does the work. A command with actions of its own (``dataset init``, ``dicom scan``) has no
# ``run``: its ``add_arguments`` adds the action parsers, and each sets its own ``func``.
COMMAND_MODULES: list[str] = [
    "lesionseg.commands.dataset",
    "lesionseg.commands.train",
    "lesionseg.commands.info",
    "lesionseg.commands.synth",
    "lesionseg.commands.segment",
    "lesionseg.commands.rank",
    "lesionseg.commands.models",
    "lesionseg.commands.worker",
    "lesionseg.commands.dicom",
    "lesionseg.commands.evaluate",
    "lesionseg.commands.rtstruct",
    "lesionseg.commands.dicomseg",
    "lesionseg.commands.demo",
]


def _command_modules(argv: Sequence[str] | None) -> list[str]:
    """The modules to register: only the command's own when ``argv`` names one (each module may import more
    when its command runs; the others are not imported at all), else every command (help, errors)."""
    if argv is not None:
        command = next((arg for arg in argv if not arg.startswith("-")), None)
        module = f"lesionseg.commands.{command}"
        if module in COMMAND_MODULES:
            return [module]
    return COMMAND_MODULES


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The command-line parser; given the ``argv`` it will parse, only the command named there is registered."""
    parser = argparse.ArgumentParser(
        prog="lesionseg",
        description="LesionSeg engine: AI segmentation of CT, from the command line.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--version", action="version", version=f"lesionseg {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="print debug messages, and the full traceback of an error"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _command_modules(argv):
        _add_command(subparsers, importlib.import_module(name))
    return parser


def _add_command(subparsers: argparse._SubParsersAction, module: ModuleType) -> None:
    parser = subparsers.add_parser(
        module.__name__.rpartition(".")[2], help=module.HELP, description=getattr(module, "DESCRIPTION", None)
    )
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)
    if hasattr(module, "run"):
        parser.set_defaults(func=module.run)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print(f"lesionseg {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        from lesionseg.jobs.protocol import terminated_by

        signum = terminated_by()
        if signum is not None:  # a cancel whose SystemExit a library turned into another error
            print(f"lesionseg {args.command}: stopped by signal {signum}", file=sys.stderr)
            return 128 + signum
        message, status = describe(error)
        if args.verbose:
            traceback.print_exc()
        print(f"lesionseg {args.command}: error: {message}", file=sys.stderr)
        return status
    return int(result or 0)
