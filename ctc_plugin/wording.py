"""How messages word things: counts, lists, names typed, and the line a warning points at.

Counts and lists read ``1 file``, ``a, b, c and 2 more``. A name typed is matched to the names
known whatever its case, dashes, underscores and spaces (``feature-ablation`` is
``FeatureAblation``). Warnings point at the user's line, past the package's own frames
(`caller_stacklevel`). Every layer's messages use these, so this module imports nothing of the
package.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "agreeing",
    "are",
    "caller_stacklevel",
    "counted",
    "first_names",
    "known_name",
    "not_utf8",
    "with_article",
]


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``count`` and ``noun``, plural unless one: ``1 shard``, ``3 shards``, ``2 classes``.

    ``plural`` is the noun's plural where it is not ``noun + "s"``.
    """
    return f"{count} {noun}" if count == 1 else f"{count} {plural or noun + 's'}"


def not_utf8(name: str) -> str | None:
    r"""``name`` as messages show it where it is not valid UTF-8, else ``None``.

    A file name written on another system may hold bytes that are not UTF-8; they are shown as
    ``\xNN``.
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")
    return None


def are(count: int, noun: str = "") -> str:
    """``count`` (and ``noun``) with its verb: ``1 folder is``, ``3 folders are``, ``2 are``."""
    return f"{counted(count, noun) if noun else count} {agreeing(count, 'is', 'are')}"


def agreeing(count: int, one: str, several: str) -> str:
    """``one`` where ``count`` is 1, else ``several``: the words that agree with a count.

    Examples:
        >>> f"1 file {agreeing(1, 'has a name', 'have names')}"
        '1 file has a name'
        >>> f"2 files {agreeing(2, 'has a name', 'have names')}"
        '2 files have names'
    """
    return one if count == 1 else several


def with_article(noun: str) -> str:
    """``noun`` after ``a``, or ``an`` where it starts with a vowel: ``a Conv2d``, ``an Atan``.

    By the letter, not the sound (``an Unfold``, ``a Upsample`` would need a dictionary): names
    of classes read well enough so.
    """
    return f"{'an' if noun[:1].lower() in 'aeiou' and noun else 'a'} {noun}"


def first_names(names: Sequence[str]) -> str:
    """Up to three of ``names``, and how many more: how messages list files and folders."""
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def known_name(given: str, known: Sequence[str], what: str) -> str:
    """``given`` as ``known`` spells it, where it differs only in case and separators.

    Separators are dashes, underscores and spaces. The command's
    ``explain --method feature-ablation`` and the benchmark's ``FeatureAblation`` name one
    method; either spelling is taken where the other is known.

    Args:
        given: The name typed.
        known: The names known, in their own spelling.
        what: What they name, for the messages (``"method"``).

    Raises:
        ValueError: For a name that starts several known ones (``ctc``: each bias sharing),
            listing them, and for an unknown name, listing every known one.
    """
    if given in known:
        return given
    key = _letters(given)
    same = [name for name in known if _letters(name) == key]
    if len(same) == 1:
        return same[0]
    starting = [name for name in known if key and _letters(name).startswith(key)]
    if len(starting) > 1:
        raise ValueError(f"{what} {given!r} names several: {', '.join(starting)}; give one")
    raise ValueError(f"unknown {what} {given!r}; choose from {', '.join(known)}")


def _letters(name: str) -> str:
    """``name`` in lower case without dashes, underscores and spaces (``+`` counts)."""
    return "".join(character for character in name.lower() if character not in "-_ ")


#: Packages whose frames stand between the user's line and the package's code: Captum's
#: wrappers (``log_usage``, ``NoiseTunnel``) and pytorch-grad-cam's (``IntegrativeGradCAM``).
WRAPPER_PACKAGES = ("captum", "pytorch_grad_cam")


#: The module of Captum's ``NoiseTunnel``, whose averaging takes tensors only.
NOISE_TUNNEL_MODULE = "captum.attr._core.noise_tunnel"


def called_from(module: str) -> bool:
    """Whether a frame of the module named ``module`` is among the callers of this call.

    E.g. `NOISE_TUNNEL_MODULE`: a method's return form that holds more than tensors (CTC's
    ``FeatureScores``, Integrative CAM's ``LayerMaps``) cannot pass through NoiseTunnel's
    averaging, and is refused there with what to do instead.
    """
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") == module:
            return True
        frame = frame.f_back
    return False


def caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside this package, for `warnings.warn`.

    A warning raised deep in a call (past decorators and helpers, and past the frames of the
    `WRAPPER_PACKAGES` a user's call may go through) then points at the user's line that made
    the call.
    """
    package = Path(__file__).resolve().parent
    frame, level = sys._getframe(1), 1
    while frame is not None and _ours(frame.f_code.co_filename, package):
        frame, level = frame.f_back, level + 1
    return level


def _ours(filename: str, package: Path) -> bool:
    """Whether a frame of ``filename`` belongs to the call: the package, or a wrapper's."""
    if filename.startswith("<"):  # exec'd or interactive code: the user's
        return False
    path = Path(filename).resolve()
    if path.is_relative_to(package):
        return True
    parts = path.parts  # an installed wrapper: .../site-packages/captum/...
    return any(
        name in WRAPPER_PACKAGES and parts[i - 1].endswith("-packages")
        for i, name in enumerate(parts)
        if i > 0
    )
