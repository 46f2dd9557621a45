"""Atomic writes, and the error for a folder holding another run's configuration."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["ConfigMismatchError", "write_atomic"]


class ConfigMismatchError(ValueError):
    """The output folder holds a run with another configuration (or another image list).

    Args:
        root: The output folder.
        differences: ``(what, stored value, requested value)`` for everything that differs.
        kind: What the folder holds, for the message (``"run"``, ``"benchmark run"``).

    Attributes:
        differences: As given.
    """

    def __init__(
        self, root: Path, differences: list[tuple[str, Any, Any]], kind: str = "run"
    ) -> None:
        self.differences = differences
        listed = "; ".join(f"{key}: {old!r} there, {new!r} now" for key, old, new in differences)
        super().__init__(
            f"{root} holds a {kind} with a different configuration ({listed}); run the same "
            "command again to resume it, or choose another --out"
        )


def write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    """Write ``path`` by calling ``write(handle)`` on a temporary file, then renaming it.

    A reader in another process never sees half a file, and a run killed mid-write (or a
    ``write`` that fails: disk full, file too large) leaves the previous file at ``path`` as it
    was and at most a temporary file. The temporary file lies in the same folder
    (``.tmp-<name>-*``), is created with the permissions a new file gets (the umask's, not
    ``tempfile``'s owner-only ones), is flushed and synced before ``os.replace``, and is removed
    if ``write`` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stream, temporary = _create_temporary(path)
    try:
        with stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _create_temporary(path: Path) -> tuple[BinaryIO, Path]:
    """A new, empty temporary file beside ``path``, open for binary writing, and its path."""
    while True:
        temporary = path.parent / f".tmp-{path.name}-{secrets.token_hex(4)}"
        try:  # exclusive: never an existing file; mode 0o666 less the umask, as open() gives
            return open(temporary, "xb"), temporary
        except FileExistsError:  # pragma: no cover - a name drawn twice
            continue
