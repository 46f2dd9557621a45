"""The torch CPU thread count of a block: shards repeat bit for bit only on a fixed count."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["MAX_THREADS", "torch_threads"]


#: The most CPU threads a command takes: far more than any machine's cores (torch crashes the
#: process starting some hundred thousand).
MAX_THREADS = 1024

#: The counts of the `torch_threads` blocks running now in any thread, by block, oldest first,
#: with the thread that runs each, and the count from before the first of them; changed only
#: under ``_GUARD``.
_RUNNING: dict[object, tuple[int, int]] = {}
_BEFORE: list[int] = []
_GUARD = threading.Lock()


@contextmanager
def torch_threads(count: int | None) -> Iterator[int]:
    """Run the block on ``count`` torch CPU threads (``None``: the current count, unchanged).

    Yields the count in use. Torch's count belongs to the process, not to a thread
    (``torch.set_num_threads`` in one thread changes it for the threads started afterwards
    and for MKL), so blocks in several threads at once (``main`` of the command line in
    threads) share it: while they overlap, the count is that of the block that began last
    among those still running; when a block ends, the count of the latest one still running
    comes back, and when the last one ends, the count from before the first. Afterwards, also
    after an error, the count is as before, so a command called in-process (tests, notebooks)
    changes nothing around it. A block that overlaps another runs (from then on) on that
    block's count, so its results repeat bit for bit only when no other block changes it.

    Raises:
        ValueError: If ``count`` is below 1 or above `MAX_THREADS` (before anything changes).
    """
    import torch

    if count is not None and count < 1:
        raise ValueError(f"--threads must be at least 1, got {count}")
    if count is not None and count > MAX_THREADS:
        raise ValueError(f"--threads must be at most {MAX_THREADS}, got {count}")
    if count is None:
        yield torch.get_num_threads()
        return
    block = object()
    with _GUARD:
        if not _RUNNING:
            _BEFORE[:] = [torch.get_num_threads()]
        _RUNNING[block] = (count, threading.get_ident())
        torch.set_num_threads(count)
        in_use = torch.get_num_threads()
    try:
        yield in_use
    finally:
        with _GUARD:
            _RUNNING.pop(block, None)  # gone in a forked child whose other thread ran it
            latest = next(reversed(_RUNNING.values()), None)
            torch.set_num_threads(_BEFORE[0] if latest is None else latest[0])


def _after_fork_in_child() -> None:
    """In a forked child, forget the blocks of the threads that did not survive the fork.

    Their counts would come back when the child's own blocks end (they never end there), and
    the guard may have been held by one of them at the fork.
    """
    global _GUARD
    _GUARD = threading.Lock()
    me = threading.get_ident()
    for block, (_, owner) in list(_RUNNING.items()):
        if owner != me:
            del _RUNNING[block]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
