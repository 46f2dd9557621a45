"""Subcommands of the ``ctc-plugin`` command, one module each, and what they share.

Each module registers its subcommand with ``add_parser(subparsers)``;
[`ctc_plugin.cli`][ctc_plugin.cli] assembles them. Nothing here imports ``ctc_plugin.cli``: the
command line depends on its commands, not the other way round.
"""

from __future__ import annotations

import argparse
import errno
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ctc_plugin.resumable.threads import torch_threads as torch_threads


def __getattr__(name: str) -> Any:
    """``torch_threads``, the commands' home of it, imported when first asked for.

    Importing this package (for `CLIError`, which ``ctc_plugin.cli`` needs at once) then loads
    none of ``ctc_plugin.resumable``.
    """
    if name == "torch_threads":
        from ctc_plugin.resumable.threads import torch_threads

        return torch_threads
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class CLIError(Exception):
    """An error the command reports as one line, with exit status 2 (bad input or set-up)."""


#: What to do about the usual failures of reading and writing files, by ``errno``.
_OS_ADVICE = {
    errno.ENOSPC: "free some disk space or write somewhere else",
    errno.EFBIG: "the file exceeds what this file system or `ulimit -f` allows: write "
    "somewhere else or raise the limit",
    errno.EACCES: "check the permissions, or write somewhere else",
    errno.EPERM: "check the permissions, or write somewhere else",
    errno.EROFS: "the file system is read-only: write somewhere else",
    errno.EIO: "the disk reported an input/output error: check it, or write somewhere else",
    errno.ENOMEM: "the machine ran out of memory: explain smaller images or fewer segments, or "
    "free memory",
}


def os_error_text(error: OSError, name_file: bool = True) -> str:
    """``error`` as a short reason and what to do: ``No space left on device: free ...``.

    An OSError raised with a message of its own (no ``errno``) keeps that message;
    ``name_file=False`` leaves out the file (for a message that names it already).
    """
    if error.errno is None or not error.strerror:
        return str(error)
    where = f" ({error.filename})" if error.filename and name_file else ""
    advice = _OS_ADVICE.get(error.errno, "check the path, then run the command again")
    return f"{error.strerror}{where}: {advice}"


def add_threads_option(parser: argparse.ArgumentParser, default: int | None, text: str) -> None:
    """Add ``--threads N`` (torch CPU threads, 1 to 1024) to ``parser``; ``None`` keeps torch's."""
    from ctc_plugin.commands.arguments import thread_count

    parser.add_argument("--threads", type=thread_count, default=default, help=text)


def add_ray_options(parser: argparse.ArgumentParser, workers: str) -> None:
    """Add ``--ray [ADDRESS]`` and ``--ray-workers N``: run the command's shards on Ray.

    ``workers`` says what the workers compute, for the help text. The pair is checked by
    ``ray_options``.
    """
    from ctc_plugin.commands.arguments import positive_int

    parser.add_argument(
        "--ray",
        nargs="?",
        const=True,
        default=None,
        metavar="ADDRESS",
        help="run on Ray (the optional extra ray): on the cluster at ADDRESS (ray://host:10001, "
        f"auto), or on a local one started for the run when no ADDRESS is given; {workers}; "
        "the same results as without --ray",
    )
    parser.add_argument(
        "--ray-workers",
        type=positive_int,
        default=None,
        help="CPUs of the local Ray cluster (default: all of this machine's)",
    )


def ray_options(args: argparse.Namespace) -> tuple[bool | str | None, int | None]:
    """``(ray, ray_workers)`` of ``ctc_plugin.resumable.run_job`` from the options.

    Raises:
        CLIError: For ``--ray-workers`` without ``--ray``, or with a cluster's ADDRESS.
    """
    if args.ray_workers is not None and args.ray is None:
        raise CLIError("--ray-workers sets the size of a local Ray cluster: add --ray")
    if args.ray_workers is not None and isinstance(args.ray, str):
        raise CLIError(
            f"--ray-workers sizes a local Ray cluster; the cluster at {args.ray} has its own "
            "workers: drop --ray-workers, or --ray's ADDRESS to start a local cluster"
        )
    return args.ray, args.ray_workers
