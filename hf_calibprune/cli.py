"""The ``hf-calibprune`` command line: an argparse front end over :mod:`hf_calibprune.commands`.

Each sub-command lives in ``hf_calibprune/commands/<name>.py`` and exposes
``add_parser(subparsers) -> argparse.ArgumentParser`` that sets ``func`` (a callable taking the parsed
namespace and returning an exit code). Adding a command is one file plus one line in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import CalibPruneError
from .version import __version__

__all__ = ["main", "COMMANDS"]

COMMANDS = ["prune", "calibration", "recover", "evaluate", "push", "study"]


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="hf-calibprune",
        description="Prune Hugging Face causal language models layer by layer with calibration data.",
    )
    parser.add_argument("--version", action="version", version=f"hf_calibprune {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log debug messages.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"hf_calibprune.commands.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command line a model card records
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except CalibPruneError as error:
        print(f"hf-calibprune {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
