"""Subcommands of the ``ctc-plugin`` command, one module each, and what they share.

Each module registers its subcommand with ``add_parser(subparsers)``;
[`ctc_plugin.cli`][ctc_plugin.cli] assembles them. Nothing here imports ``ctc_plugin.cli``: the
command line depends on its commands, not the other way round.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager


class CLIError(Exception):
    """An error the command reports as one line, with exit status 2 (bad input or set-up)."""


def add_threads_option(parser: argparse.ArgumentParser, default: int | None, text: str) -> None:
    """Add ``--threads N`` (torch CPU threads, 1 or more) to ``parser``; ``None`` keeps torch's."""
    from ctc_plugin.commands.arguments import positive_int

    parser.add_argument("--threads", type=positive_int, default=default, help=text)


@contextmanager
def torch_threads(count: int | None) -> Iterator[int]:
    """Run the block on ``count`` torch CPU threads (``None``: the current count).

    Yields the count in use; the previous count is restored afterwards, also after an error,
    so a command called in-process (tests, notebooks) changes nothing around it.

    Raises:
        ValueError: If ``count`` is below 1 (before anything changes).
    """
    import torch

    if count is not None and count < 1:
        raise ValueError(f"--threads must be at least 1, got {count}")
    previous = torch.get_num_threads()
    try:
        if count is not None:
            torch.set_num_threads(count)
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
