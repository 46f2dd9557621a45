"""Option types shared by every subcommand: numbers in range, files to read, paths to write.

Also the option groups several commands share word for word: the image preprocessing
(`add_preprocessing_options`: ``--resize``, ``--crop``, ``--mean``, ``--std`` of ``explain``,
``demo`` and ``explain-dataset``); and the one check that an output does not name one of the
command's input files (`check_outputs_spare_inputs`).

Each is an argparse ``type``: it turns the option's text into a value or raises
``argparse.ArgumentTypeError``, which argparse reports as one line,
``ctc-plugin COMMAND: error: argument --flag: MESSAGE`` (see `ctc_plugin.cli`), before
anything is loaded or computed. String defaults go through the same check.

The path checks look at the file system as it is when the command starts; they catch the
usual mistakes (a typo, a folder given for a file, a file in the way of a folder, a read-only
place), not a race with another process.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from ctc_plugin.resumable.threads import MAX_THREADS
from ctc_plugin.wording import not_utf8

#: Largest seed: every random generator the commands seed (torch, NumPy) takes 32 bits.
MAX_SEED = 2**32 - 1


def integer(minimum: int = 1, maximum: int | None = None) -> Callable[[str], int]:
    """An option type for whole numbers from ``minimum`` to ``maximum`` (inclusive)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def real(
    minimum: float | None = None, maximum: float | None = None, *, positive: bool = False
) -> Callable[[str], float]:
    """An option type for finite numbers in ``[minimum, maximum]`` (``> 0`` if ``positive``).

    ``nan`` and ``inf``, which ``float`` accepts, are refused.
    """

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if positive and value <= 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum:g}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


#: Counts, sizes, epochs: 1 or more.
positive_int = integer(1)
#: ``--threads``: 1 to [`MAX_THREADS`][ctc_plugin.resumable.threads.MAX_THREADS].
thread_count = integer(1, MAX_THREADS)
#: Counts that may be zero.
non_negative_int = integer(0)
#: Random seeds: 0 to 2**32 - 1.
seed = integer(0, MAX_SEED)
#: Any finite number.
finite_float = real()
#: Rates, scales: finite and above 0.
positive_float = real(positive=True)
#: Loss weights, fractions that may exceed 1: finite and 0 or more.
non_negative_float = real(0.0)
#: Fractions of a whole: 0 to 1.
fraction = real(0.0, 1.0)


def crop_size(text: str) -> int | str:
    """``--crop``: a positive side, or ``none`` (keep the whole resized image)."""
    if text.strip().lower() == "none":
        return "none"
    return positive_int(text)


crop_size.__name__ = "crop"


def add_preprocessing_options(parser: argparse.ArgumentParser) -> None:
    """``--resize``, ``--crop``, ``--mean`` and ``--std``: how each image becomes the model's input.

    Each defaults to ``None``, the model's own preprocessing;
    [`preprocessing_for`][ctc_plugin.commands.explain_setup.preprocessing_for] applies what is
    given.
    """
    parser.add_argument(
        "--resize",
        type=positive_int,
        default=None,
        help="length of the image's shorter side after resizing, the aspect ratio kept "
        "(default: the model's own: 96 for zoo models, the weights' for torchvision, timm's "
        "data config, the hf: folder's image processor, 224 for module:callable)",
    )
    parser.add_argument(
        "--crop",
        type=crop_size,
        default=None,
        metavar="N|none",
        help="side of the centre crop; none keeps the whole resized image (default: the "
        "model's own input size, at most --resize: 96, the weights', timm's or the image "
        "processor's crop; none for module:callable models)",
    )
    parser.add_argument(
        "--mean",
        type=finite_float,
        nargs=3,
        metavar=("R", "G", "B"),
        help="normalisation mean the model expects (with --std): prepended to the model, so "
        "segmenters and figures see pixels (default: the model's own)",
    )
    parser.add_argument(
        "--std",
        type=positive_float,
        nargs=3,
        metavar=("R", "G", "B"),
        help="normalisation standard deviation (with --mean)",
    )


def add_split_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--split NAME`` (default ``shapes``): the synthetic data split and its classes."""
    from ctc_plugin.datasets.splits import SPLITS

    classes = "; ".join(f"{name}: {', '.join(names)}" for name, names in SPLITS.items())
    parser.add_argument(
        "--split",
        choices=tuple(SPLITS),
        default="shapes",
        help=f"synthetic data split, by the classes its images show ({classes}; "
        "default: %(default)s)",
    )


#: Characters of a file-name pattern, which a shell expands where a file matches it.
PATTERN_CHARACTERS = frozenset("*?[")


def input_file(text: str) -> Path:
    """An option type for a file to read: it must exist, be a file and be readable."""
    path = Path(_named(text, "a file")).expanduser()
    if not path.exists():
        unexpanded = (
            " (a pattern the shell did not expand: no file matches it, or it was quoted)"
            if PATTERN_CHARACTERS & set(text)
            else ""
        )
        raise argparse.ArgumentTypeError(f"file not found: {text}{unexpanded}")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(
            f"{text} is not a regular file (a device, pipe or socket); give a file"
        )
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"cannot read {text} (permission denied)")
    return path


#: What a missing ``--weights`` file is told: the file it takes, and that nothing is downloaded.
WEIGHTS_FILE_ADVICE = (
    "give a state-dict file, what torch.save(model.state_dict(), PATH) writes; nothing is "
    "downloaded, so to try a torchvision, timm or module:callable model without trained weights, "
    "save its random ones that way"
)


def weights_file(text: str) -> Path:
    """An option type for ``--weights``: an `input_file`, and a missing one is told what to give."""
    try:
        return input_file(text)
    except argparse.ArgumentTypeError as error:
        if Path(text).expanduser().exists():
            raise
        raise argparse.ArgumentTypeError(f"{error}; {WEIGHTS_FILE_ADVICE}") from None


def output_file(text: str) -> Path:
    """An option type for a file to write (missing folders above it are created).

    Refused: a path that is an existing folder, an existing file that cannot be written, and
    a path under an existing file or under a folder that cannot be written.
    """
    path = Path(_named(text, "a file name")).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text} (permission denied)")
    _check_parent(path, text)
    return path


def output_folder(text: str) -> Path:
    """An option type for a folder to write into (created with its parents if missing).

    Refused: an existing file, an existing folder that cannot be written, and a path under an
    existing file or under a folder that cannot be written.
    """
    path = Path(_named(text, "the folder's name (. for the current one)")).expanduser()
    if path.is_symlink() and not path.exists():
        raise argparse.ArgumentTypeError(
            f"{text} is a link to {os.readlink(path)}, which does not exist; create that "
            "folder, or give another"
        )
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"cannot write into {text} (permission denied)")
        return path
    _check_parent(path, text)
    return path


def run_folder(text: str) -> Path:
    """An option type for a resumable run's folder: `output_folder`, or an existing folder.

    An existing folder that cannot be written is taken too: a finished run there is run again
    as a no-op, writing nothing; the run refuses the folder when it has anything to write.
    """
    path = Path(_named(text, "the folder's name (. for the current one)")).expanduser()
    if path.is_dir():
        return path
    return output_folder(text)


def existing_folder(text: str) -> Path:
    """An option type for an existing folder whose files are read and rewritten in place."""
    path = Path(_named(text, "the folder's name (. for the current one)")).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"folder not found: {text}")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder")
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write into {text} (permission denied)")
    return path


def _named(text: str, wanted: str) -> str:
    """``text``, refused when empty or not valid UTF-8.

    ``Path("")`` is the current folder (an unset variable?). A name with bytes that are not
    UTF-8 (written on another system) cannot be shown in a figure's title or stored as text,
    so a command would fail at its end; ``explain-dataset`` refuses such image names too.
    """
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"the name {text!r} is empty, and so is a folder (the current one): give {wanted}"
        )
    shown = not_utf8(text)
    if shown is not None:
        raise argparse.ArgumentTypeError(
            f"the name {shown} is not valid UTF-8 (written on another system?); rename it"
        )
    return text


def _check_parent(path: Path, text: str) -> None:
    """Refuse ``path`` if its nearest existing ancestor is no folder or cannot be written."""
    for ancestor in path.absolute().parents:
        if not ancestor.exists():
            continue
        if not ancestor.is_dir():
            raise argparse.ArgumentTypeError(
                f"cannot create {text}: {ancestor} is a file, not a folder"
            )
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(
                f"cannot create {text}: no permission to write into {ancestor}"
            )
        return


def same_file(first: Path, second: Path) -> bool:
    """Whether two paths name one file: the same resolved path, or one file through links."""
    if first.resolve() == second.resolve():
        return True
    return first.exists() and second.exists() and os.path.samefile(first, second)


def check_outputs_spare_inputs(
    flag: str, out: Path, what: str, inputs: Iterable[tuple[str, Path | None]]
) -> None:
    """Refuse an output path that names the same file as one of the command's inputs.

    Writing ``out`` would replace that input (a link or another spelling of its path counts as
    the same file). Called before anything is loaded, so a refused command changes nothing.

    Args:
        flag: The output's option (``--out``, ``--checkpoint``).
        out: The output path, as given or derived.
        what: What is written there, for the message (``the figure``, ``the explainer``).
        inputs: ``(name, path)`` of each input (an option, or ``IMAGE``); ``None`` when not given.

    Raises:
        CLIError: Naming both, and which option to change.
    """
    from ctc_plugin.commands import CLIError

    for name, path in inputs:
        if path is not None and same_file(out, path):
            spelled = "" if out == path else f" (as {out})"
            raise CLIError(
                f"argument {flag}: {name} and {flag} both name {path}{spelled}: {what} would "
                f"replace it; give another {flag}"
            )


def checked(flag: str, check: Callable[[str], Path], text: str) -> Path:
    """Apply an option type to a value chosen while the command runs (a derived default).

    Raises:
        CLIError: What argparse would have reported for ``flag``.
    """
    from ctc_plugin.commands import CLIError

    try:
        return check(text)
    except argparse.ArgumentTypeError as error:
        raise CLIError(f"argument {flag}: {error}") from error
