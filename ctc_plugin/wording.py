"""How messages count and list things: ``1 file``, ``3 files``, ``a, b, c and 2 more``.

Every layer's messages use these, so this module imports nothing of the package.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["counted", "first_names"]


def counted(count: int, noun: str) -> str:
    """``count`` and ``noun``, plural unless one: ``1 shard``, ``3 shards``.

    ``noun`` is a regular noun (the plural adds ``s``).
    """
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def first_names(names: Sequence[str]) -> str:
    """Up to three of ``names``, and how many more: how messages list files and folders."""
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")
