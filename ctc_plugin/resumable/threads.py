"""The torch CPU thread count of a block: shards repeat bit for bit only on a fixed count."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["MAX_THREADS", "torch_threads"]


#: The most CPU threads a command takes: far more than any machine's cores (torch crashes the
#: process starting some hundred thousand).
MAX_THREADS = 1024

#: The counts of the `torch_threads` blocks running now in any thread, by block, oldest first,
#: and the count from before the first of them; changed only under ``_GUARD``.
_RUNNING: dict[object, int] = {}
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
        _RUNNING[block] = count
        torch.set_num_threads(count)
        in_use = torch.get_num_threads()
    try:
        yield in_use
    finally:
        with _GUARD:
            del _RUNNING[block]
            latest = next(reversed(_RUNNING.values()), None)
            torch.set_num_threads(_BEFORE[0] if latest is None else latest)
