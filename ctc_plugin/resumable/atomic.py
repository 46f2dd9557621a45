"""Atomic writes, and the error for a folder holding another run's configuration."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
        listed = "; ".join(
            f"{key}: {_short(old)} there, {_short(new)} now" for key, old, new in differences
        )
        super().__init__(
            f"{root} holds a {kind} with a different configuration ({listed}); run the same "
            "command again to resume it, or choose another --out"
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    """Write ``path`` by calling ``write(handle)`` on a temporary file, then renaming it.

    A reader in another process never sees half a file, and a run killed mid-write leaves at
    most a temporary file. The temporary file lies in the same folder (``.tmp-<name>-*``), is
    flushed and synced before ``os.replace``, and is removed if ``write`` fails.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
