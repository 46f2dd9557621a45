"""The ``ctc-plugin`` command.

Each subcommand lives beside the code it drives and registers itself through a small
``add_parser(subparsers)`` function; this module only assembles them and maps errors to a
clean message and exit status.

Every user error (a bad option value, a missing or unreadable file, an output path that cannot
be written, an image that is no image, ...) ends the command with exit status 2 and one line on
stderr, ``ctc-plugin COMMAND: error: MESSAGE``, argparse's own style, without a usage block or
a traceback. Mistakes argparse can see are found while parsing (the option types of
`ctc_plugin.commands.arguments`); the rest are `CLIError` (defined in `ctc_plugin.commands`, so
the commands never import this module back; or the ``ValueError`` /
``FileNotFoundError`` the library raises for bad input, or an ``OSError`` of the system: disk
full, file too large, no permission) while the command runs. Anything else is a bug and keeps
its traceback.

Two ends are not errors of the command: Ctrl-C stops it with exit status 130 and one line,
``ctc-plugin COMMAND: interrupted`` (for the resumable commands, ``explain-dataset`` and
``benchmark``, followed by ``; run the same command again to resume``); and a reader that
stops reading (``ctc-plugin explain ... | head -1``) ends it quietly with status 141
(128 + SIGPIPE), as the shell's own tools end.

Building the parser imports no heavy module (torch, torchvision, captum, zennit): the command
modules import them inside the functions that run a command, so ``ctc-plugin --help``,
``ctc-plugin COMMAND --help`` and ``--version`` answer at once. Importing this module imports
none of the command modules either: `main` imports them while it builds the parser, so that a
Ctrl-C at the very start of a command (while they load) ends it as cleanly as later.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ctc_plugin import __version__
from ctc_plugin.commands import CLIError, os_error_text

#: The modules that contribute subcommands, each with ``add_parser(subparsers)``; the parser they
#: add sets ``func`` (a callable taking the parsed namespace and returning an exit status).
#: Imported by `build_parser`.
SUBCOMMAND_MODULES = (
    "ctc_plugin.commands.explain",
    "ctc_plugin.commands.zoo",
    "ctc_plugin.commands.explainer",
    "ctc_plugin.commands.benchmark",
    "ctc_plugin.runs.command",
)

__all__ = ["Parser", "UsageError", "build_parser", "main"]


class UsageError(CLIError):
    """A command-line mistake found while parsing, reported under the parser's ``prog``."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle by the constructor's arguments (the message is ``args[0]``) and its state."""
        return (type(self), (self.prog, self.args[0]), vars(self))


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line: ``PROG: error: MESSAGE`` and status 2.

    ``error`` raises `UsageError` instead of printing the usage block and exiting;
    `main` prints it. Subcommand parsers are made of this class too, and each parser
    that sets ``func`` also records its ``prog`` (``ctc-plugin zoo train``), the name that
    errors raised while the command runs are reported under.
    """

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        """argparse's, keeping the words it was given for `error`'s hint."""
        self._words = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):  # type: ignore[override]
        """Raise `UsageError` (argparse would print the usage block and exit).

        A missing positional argument where an option that takes several values was given
        gets a hint: that option took it (``--targets label photos/``).
        """
        missing = message.partition("the following arguments are required: ")[2]
        positional = [word for word in missing.split(", ") if word.isupper()]
        words = getattr(self, "_words", [])
        several = [
            action.option_strings[0]
            for action in self._actions
            if action.nargs in ("+", "*")
            and any(word.split("=")[0] in action.option_strings for word in words)
        ]
        if positional and several:
            takes = (
                "takes every word after it" if len(several) == 1 else "take every word after them"
            )
            message += f"; give {positional[0]} before {' and '.join(several)}, which {takes}"
        raise UsageError(self.prog, message)

    def set_defaults(self, **kwargs) -> None:
        """Set defaults; with ``func``, also ``prog``: the name errors are reported under."""
        if "func" in kwargs:
            kwargs.setdefault("prog", self.prog)
        super().set_defaults(**kwargs)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every available subcommand registered."""
    parser = Parser(
        prog="ctc-plugin",
        description="Segment-level explanations (CTC, Explainer, Integrative CAM) for "
        "PyTorch image classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status.

    A user error returns 2 after one line on stderr, ``ctc-plugin COMMAND: error: MESSAGE``
    (also with no COMMAND, and for arguments no command knows). ``--help`` still exits
    through ``SystemExit(0)``, as argparse does. A Ctrl-C while the command modules load
    (building the parser) returns 130 after ``ctc-plugin: interrupted``, as later.
    """
    try:
        parser = build_parser()
    except KeyboardInterrupt:
        return _interrupted(argparse.Namespace(prog="ctc-plugin"))
    with _one_line_warnings(parser.prog):
        return _run(parser, argv)


#: The command each thread's `main` runs, which its warnings name (see `_one_line_warnings`).
_COMMAND = threading.local()
#: How many `main` calls show one-line warnings now, and the form they replaced.
_ONE_LINE_USERS = {"count": 0, "previous": warnings.formatwarning, "latest": "ctc-plugin"}
_ONE_LINE_LOCK = threading.Lock()


@contextmanager
def _one_line_warnings(prog: str) -> Iterator[None]:
    """Show this thread's warnings as one line in the block: ``PROG: warning: MESSAGE (Kind)``.

    Python's own form names a file and line of the package and repeats its source line, which
    means nothing to a command's user; the warning's class stays, for ``-W`` and
    ``PYTHONWARNINGS``. Only how a shown warning reads changes: filters, and code that records
    warnings (``pytest.warns``), see them as before. ``main`` in several threads at once puts
    Python's form back when the last one ends.
    """
    outer, _COMMAND.prog = getattr(_COMMAND, "prog", None), prog
    with _ONE_LINE_LOCK:
        if _ONE_LINE_USERS["count"] == 0:
            _ONE_LINE_USERS["previous"] = warnings.formatwarning
            warnings.formatwarning = _one_line
        _ONE_LINE_USERS["count"] += 1
        _ONE_LINE_USERS["latest"] = prog
    try:
        yield
    finally:
        _COMMAND.prog = outer  # a main called inside another: the outer's again
        with _ONE_LINE_LOCK:
            _ONE_LINE_USERS["count"] -= 1
            if _ONE_LINE_USERS["count"] == 0:
                warnings.formatwarning = _ONE_LINE_USERS["previous"]


def _one_line(message: Any, category: Any, filename: str, lineno: int, line: Any = None) -> str:
    """A warning in the form of `_one_line_warnings`.

    A thread that a command started (a pool of workers) names the command that started last.
    """
    prog = getattr(_COMMAND, "prog", None) or _ONE_LINE_USERS["latest"]
    return f"{prog}: warning: {' '.join(str(message).split())} ({category.__name__})\n"


def _run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv`` and run its command (``main`` but for the warnings' form)."""
    args = argparse.Namespace(prog=parser.prog)
    try:
        args, extra = parser.parse_known_args(argv)
        _COMMAND.prog = getattr(args, "prog", parser.prog)  # no command: the parser's
        if not getattr(args, "func", None):
            commands = ", ".join(_command_names(parser))
            raise UsageError(
                parser.prog, f"choose a COMMAND ({commands}); `ctc-plugin --help` describes them"
            )
        if extra:
            raise UsageError(args.prog, f"unrecognized arguments: {' '.join(extra)}" + _hint(extra))
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # here, not at exit: a closed pipe is seen below
        return status
    except UsageError as error:
        return _report(error.prog, error)
    except BrokenPipeError:
        return _reader_gone()
    except (CLIError, FileNotFoundError, ValueError) as error:
        return _report(args.prog, error)
    except OSError as error:  # disk full, file too large, no permission, ...
        kept = ""
        if getattr(args, "resumable", False) and error.errno is not None:
            kept = "; what was finished so far is kept: run the same command again to resume"
        return _report(args.prog, os_error_text(error) + kept)
    except KeyboardInterrupt:
        return _interrupted(args)


def _hint(extra: Sequence[str]) -> str:
    """What to do about arguments left over that name images: give them first."""
    from ctc_plugin.image_files import is_image_file

    images = [word for word in extra if is_image_file(word) or os.path.isdir(word)]
    if not images:
        return ""
    return (
        f"; {', '.join(map(repr, images))} looks like images: give them before the options "
        "(an option that takes several values takes every word after it)"
    )


def _report(prog: str, error: Exception) -> int:
    """Print ``error`` as the one line of a user error; return the exit status 2."""
    message = " ".join(str(error).split())  # one line, whatever the message holds
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def _interrupted(args: argparse.Namespace) -> int:
    """Ctrl-C: one line, and exit status 130 (128 + SIGINT) as a shell reports it."""
    hint = "; run the same command again to resume" if getattr(args, "resumable", False) else ""
    said = getattr(args, "interrupt_hint", None)  # a command's own: what it left to resume
    if said is not None:
        hint = said()
    print(f"{args.prog}: interrupted{hint}", file=sys.stderr)
    return 128 + signal.SIGINT


def _reader_gone() -> int:
    """The reader of stdout went away (``| head``): no traceback, no message, status 141.

    stdout is pointed at ``os.devnull``, so that Python's last flush at exit does not fail on
    the closed pipe again (the recipe of Python's documentation for SIGPIPE).
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (captured): nothing to do
        pass
    return 128 + getattr(signal, "SIGPIPE", 13)


def _command_names(parser: argparse.ArgumentParser) -> list[str]:
    """The subcommands registered on ``parser``."""
    return [
        name
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name in action.choices
    ]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
