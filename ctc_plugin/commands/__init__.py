"""Subcommands of the ``ctc-plugin`` command, one module each."""

from __future__ import annotations

import argparse


def add_threads_option(parser: argparse.ArgumentParser, default: int | None, text: str) -> None:
    """Add ``--threads N`` (torch CPU threads) to ``parser``; ``None`` keeps torch's count."""
    parser.add_argument("--threads", type=int, default=default, help=text)


def set_threads(count: int | None) -> int:
    """Run torch on ``count`` CPU threads (``None``: keep the current count); return the count.

    Raises:
        ValueError: If ``count`` is below 1.
    """
    import torch

    if count is not None:
        if count < 1:
            raise ValueError(f"--threads must be at least 1, got {count}")
        torch.set_num_threads(count)
    return torch.get_num_threads()
