"""The torch CPU thread count of a block: shards repeat bit for bit only on a fixed count."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["torch_threads"]


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
