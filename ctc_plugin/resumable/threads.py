"""The torch CPU thread count of a block: shards repeat bit for bit only on a fixed count."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["MAX_THREADS", "torch_threads"]


#: The most CPU threads a command takes: far more than any machine's cores (torch crashes the
#: process starting some hundred thousand).
MAX_THREADS = 1024


@contextmanager
def torch_threads(count: int | None) -> Iterator[int]:
    """Run the block on ``count`` torch CPU threads (``None``: the current count).

    Yields the count in use; the previous count is restored afterwards, also after an error,
    so a command called in-process (tests, notebooks) changes nothing around it.

    Raises:
        ValueError: If ``count`` is below 1 or above `MAX_THREADS` (before anything changes).
    """
    import torch

    if count is not None and count < 1:
        raise ValueError(f"--threads must be at least 1, got {count}")
    if count is not None and count > MAX_THREADS:
        raise ValueError(f"--threads must be at most {MAX_THREADS}, got {count}")
    previous = torch.get_num_threads()
    try:
        if count is not None:
            torch.set_num_threads(count)
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
