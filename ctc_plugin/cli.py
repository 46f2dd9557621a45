"""The ``ctc-plugin`` command.

Each subcommand lives beside the code it drives and registers itself through a small
``add_parser(subparsers)`` function; this module only assembles them and maps errors to a
clean message and exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: Modules that contribute subcommands, each with ``add_parser(subparsers)``; the parser they
#: add sets ``func`` (a callable taking the parsed namespace and returning an exit status).
SUBCOMMAND_MODULES = (
    "ctc_plugin.commands.explain",
    "ctc_plugin.commands.zoo",
    "ctc_plugin.commands.explainer",
    "ctc_plugin.commands.benchmark",
)


class CLIError(Exception):
    """An error the command reports as one line, with exit status 2 (bad input or set-up)."""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="ctc-plugin",
        description="Segment-level explanations (CTC, Explainer, Integrative CAM) for "
        "PyTorch image classifiers.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:  # a real missing dependency inside the module
                raise
            continue
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (CLIError, FileNotFoundError, ValueError) as error:
        print(f"ctc-plugin {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
