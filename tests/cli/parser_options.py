"""The argparse action of a subcommand's option, for tests of help texts and choices."""

from __future__ import annotations

import argparse

from ctc_plugin.cli import build_parser


def option_action(command: str, flag: str) -> argparse.Action:
    """The action of ``flag`` (say ``--quick``) in ``ctc-plugin COMMAND``'s parser."""
    subparsers = next(
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    return next(
        action for action in subparsers.choices[command]._actions if flag in action.option_strings
    )
