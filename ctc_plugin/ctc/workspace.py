"""Reusable memory for the speed-ups: scratch buffers, and results' memory once it is free again."""

from __future__ import annotations

import collections
import ctypes
import functools
import itertools
import math
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "OutputPool",
    "RowRange",
    "Workspace",
    "advise_huge_pages",
    "fresh_memory",
    "row_parts",
    "row_runs",
]


class Workspace:
    """Reusable scratch buffers for the fused sharing, one set per thread.

    Fresh large tensors cost a page fault per 4 KiB on first touch (on a CPU as much as several
    elementwise passes), so the buffers are kept and reused across layers and calls in named
    slots; each slot grows to the largest request seen and is released with its owner.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def buffers(
        self,
        like: torch.Tensor,
        count: int = 2,
        slot: str = "copies",
        shape: tuple[int, ...] | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """``count`` uninitialised contiguous tensors shaped, typed and placed like ``like``.

        ``shape`` and ``dtype`` override the shape and dtype. Buffers of one slot are reused by
        the next request for that slot; requests for different slots never share memory.
        """
        slots = getattr(self._local, "slots", None)
        if slots is None:
            slots = self._local.slots = {}
        held = slots.get(slot)
        shape = tuple(like.shape) if shape is None else tuple(shape)
        dtype = like.dtype if dtype is None else dtype
        numel = math.prod(shape)
        if held is None or held.dtype != dtype or held.device != like.device:
            held = slots[slot] = torch.empty(count, numel, dtype=dtype, device=like.device)
        elif held.shape[0] < count or held.shape[1] < numel:  # grow, never shrink
            rows, columns = max(count, held.shape[0]), max(numel, held.shape[1])
            held = slots[slot] = torch.empty(rows, columns, dtype=dtype, device=like.device)
        return tuple(held[i, :numel].view(shape) for i in range(count))


#: The use count of a tensor's storage (torch's private binding; ``None`` where it is missing,
#: and then nothing is ever reused).
_storage_use_count = getattr(torch._C, "_storage_Use_Count", None)

#: Rows ``[first, stop)`` of one row of a (B, channels, H, W) result; empty where ``stop <= first``.
RowRange = tuple[int, int]


@dataclass
class _Buffer:
    """One buffer of an `OutputPool`: its memory, and what is known to be zero in it.

    Attributes:
        base: The memory, as bytes. Results are views of it, so they share its version counter:
            any write into a result (or a view of one) shows in ``base._version``.
        dirty_end: Every byte from this one on is known to be zero (results start at the
            buffer's first byte and are written only inside themselves).
        written: Where the first ``dirty_end`` bytes may be nonzero, as ``(dtype, shape, rows per
            row, version)`` of the last result: valid while ``base._version`` is still
            ``version``; ``None``: anywhere.
    """

    base: torch.Tensor
    dirty_end: int = 0
    written: tuple[torch.dtype, tuple[int, ...], tuple[RowRange, ...], int] | None = None

    def __post_init__(self) -> None:
        self._storage = self.base.untyped_storage()
        self._idle_uses = _uses(self._storage)  # the pool's own: its tensor and this object

    def free(self) -> bool:
        """Whether nothing but the pool uses the memory."""
        return _storage_use_count is not None and _uses(self._storage) == self._idle_uses

    def recorded(self) -> tuple[torch.dtype, tuple[int, ...], tuple[RowRange, ...]] | None:
        """The last record's ``(dtype, shape, rows)`` while nothing wrote since, else ``None``."""
        if self.written is None or self.base._version != self.written[3]:
            return None
        return self.written[:3]


class OutputPool:
    """Memory for a pass's full-size results, reused once nothing else holds it.

    A result goes to the model, which may keep it as long as it likes, so unlike a `Workspace`
    slot its memory is reused only when nothing but the pool uses it any more (torch's storage
    use count: every tensor on it counts, views, NumPy arrays and saved tensors included). A
    fresh large tensor costs a page fault per 4 KiB on first touch (on a CPU as much as several
    elementwise passes over it); a reused one costs none. The pool lives as long as its pass.

    The pool also remembers which rows of a result may be nonzero (`record`), so that a zero
    result on the same memory (`zeros`) clears only those instead of the whole buffer: the copies
    of the first layers are zero on most of the map. A result that its caller writes on some rows
    and that must be zero elsewhere (`zeros_outside`) clears only what may be nonzero outside
    them: nothing at all where the rows cover the map (the deeper layers).

    A request takes the smallest free buffer that holds it and is at most ``slack`` times its
    size (a result on a much larger buffer would hold memory that a fresh one does not). A free
    buffer larger than each of the last ``window`` requests is let go: the network has moved on
    to smaller maps, and holding it would only raise the pass's peak memory.

    Attributes:
        keep: At most this many buffers are held: a request that none fits lets go of the
            least recently used free one (or, when all are in use, gets memory of its own).
        window: How many recent requests decide which buffers are still worth holding.
        slack: How much larger than a request a buffer that serves it may be.
    """

    def __init__(self, keep: int = 3, window: int = 8, slack: float = 1.5) -> None:
        self.keep = keep
        self.window = window
        self.slack = slack
        self._held: list[_Buffer] = []
        self._recent: collections.deque[int] = collections.deque(maxlen=window)

    def empty(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """An uninitialised contiguous tensor of ``shape``, typed and placed like ``like``."""
        out, buffer = self._take(shape, like)
        if buffer is not None:  # the caller may write anywhere in the result
            buffer.written = None
            buffer.dirty_end = max(buffer.dirty_end, _nbytes(out))
        return out

    def zeros(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A (B, channels, H, W) tensor of zeros, typed and placed like ``like``.

        On reused memory whose last result was `record`-ed (and not written since), only its
        recorded rows are cleared (`zeros_outside` with no rows kept).
        """
        return self.zeros_outside(shape, like, _NOTHING)

    def zeros_outside(
        self, shape: tuple[int, ...], like: torch.Tensor, rows: Sequence[RowRange]
    ) -> torch.Tensor:
        """A (B, channels, H, W) tensor that is zero outside ``rows`` (one range per row).

        Rows past the end of ``rows`` keep nothing. Inside them its values are undefined: the
        caller writes them. Only what may be nonzero outside them is cleared: on reused memory
        whose last result was `record`-ed (and not written since), its recorded rows less the
        new ones; on other memory, everything outside the new rows (everything that may be
        dirty where no row is kept). A layer whose rows cover the whole map clears nothing.
        """
        out, buffer = self._take(shape, like)
        whole = [(0, out.shape[2])] * out.shape[0]
        if buffer is None:  # fresh memory of its own
            _clear_difference(out, whole, rows)
            return out
        recorded = buffer.recorded()
        if recorded is not None:
            dtype, old_shape, old_rows = recorded
            old = _as_result(buffer.base, old_shape, dtype)
            same = old_shape == tuple(shape) and dtype == like.dtype
            _clear_difference(old, old_rows, rows if same else _NOTHING)
        elif not any(stop > first for first, stop in rows):  # nothing kept: what may be dirty
            buffer.base[: buffer.dirty_end].zero_()
        elif buffer.dirty_end > 0:
            if buffer.dirty_end > _nbytes(out):
                buffer.base[_nbytes(out) : buffer.dirty_end].zero_()
            _clear_difference(out, whole, rows)
        buffer.written, buffer.dirty_end = None, _nbytes(out)
        return out

    def record(self, result: torch.Tensor, rows: Sequence[RowRange]) -> None:
        """Note that each row of a (B, channels, H, W) ``result`` is zero outside ``rows``.

        Ignored unless ``result`` is a contiguous result of the pool's (from its buffer's start)
        and every byte after it is known to be zero.
        """
        if result.dim() != 4 or len(rows) != result.shape[0] or not result.is_contiguous():
            return
        if result.storage_offset() != 0:
            return
        pointer = result.untyped_storage().data_ptr()
        for buffer in self._held:
            if buffer.base.data_ptr() == pointer:
                if buffer.dirty_end <= _nbytes(result):
                    written = (result.dtype, tuple(result.shape), tuple(rows), result._version)
                    buffer.written, buffer.dirty_end = written, _nbytes(result)
                else:  # the bytes after the result may hold anything
                    buffer.written = None
                return

    def _take(
        self, shape: tuple[int, ...], like: torch.Tensor
    ) -> tuple[torch.Tensor, _Buffer | None]:
        """A result of ``shape`` and the held buffer it lies on (``None``: memory of its own)."""
        nbytes = math.prod(shape) * like.element_size()
        self._recent.append(nbytes)
        largest = max(self._recent)
        self._held = [b for b in self._held if b.base.numel() <= largest or not b.free()]
        fitting = [
            (buffer.base.numel(), index)
            for index, buffer in enumerate(self._held)
            if nbytes <= buffer.base.numel() <= self.slack * nbytes
            and buffer.base.device == like.device
        ]
        for _, index in sorted(fitting):  # the smallest free buffer that holds it
            buffer = self._held[index]
            if buffer.free():
                self._held.append(self._held.pop(index))  # the most recently used last
                return _as_result(buffer.base, shape, like.dtype), buffer
        base = fresh_memory(nbytes, like.device)
        if _storage_use_count is None:  # reuse could not be detected: nothing is held
            return _as_result(base, shape, like.dtype), None
        if len(self._held) >= self.keep:  # let go of the least recently used free buffer
            free = [index for index, buffer in enumerate(self._held) if buffer.free()]
            if not free:
                return _as_result(base, shape, like.dtype), None
            del self._held[free[0]]
        buffer = _Buffer(base, dirty_end=nbytes)  # uninitialised
        self._held.append(buffer)
        return _as_result(base, shape, like.dtype), buffer


def _as_result(base: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """The start of a buffer's bytes as a contiguous tensor (a view: one version counter)."""
    nbytes = math.prod(shape) * dtype.itemsize
    return base[:nbytes].view(dtype).view(shape)


def _nbytes(tensor: torch.Tensor) -> int:
    """How many bytes a contiguous tensor takes."""
    return tensor.numel() * tensor.element_size()


#: No rows kept (`_clear_difference` reads it as one empty range for every row).
_NOTHING: Sequence[RowRange] = ()


def _clear_difference(
    result: torch.Tensor, rows: Sequence[RowRange], keep: Sequence[RowRange]
) -> None:
    """Zero, in each row of a (B, channels, H, W) ``result``, ``rows`` less ``keep``.

    Each difference is at most two ranges, below and above the kept one; consecutive rows with
    the same ranges are cleared in one call. Rows past the end of ``keep`` keep nothing.
    """
    below, above = [], []
    kept = itertools.chain(keep, itertools.repeat((0, 0)))  # none given: nothing kept
    for (first, stop), (keep_first, keep_stop) in zip(rows, kept):
        if keep_stop <= keep_first:  # nothing kept: the whole range
            below.append((first, stop))
            above.append((0, 0))
        else:
            below.append((first, min(stop, keep_first)))
            above.append((max(first, keep_stop), stop))
    for ranges in (below, above):
        for part in row_parts(ranges):
            result[part].zero_()


def fresh_memory(nbytes: int, device: torch.device) -> torch.Tensor:
    """``nbytes`` of new memory as a uint8 tensor (uninitialised).

    On Linux the kernel is asked to back it with 2 MiB pages where it offers transparent huge
    pages: a fresh large tensor costs a page fault per 4 KiB on first touch, and one per 2 MiB
    with huge pages (zeroing a fresh 200 MB tensor took 73 ms, 22 ms with huge pages and 9 ms
    reused, on this project's machine). PyTorch's own ``THP_MEM_ALLOC_ENABLE=1`` does this for
    every allocation; here it is only the pool's buffers.
    """
    memory = torch.empty(nbytes, dtype=torch.uint8, device=device)
    if device.type == "cpu":
        advise_huge_pages(memory.data_ptr(), nbytes)
    return memory


#: Linux's ``madvise`` advice for transparent huge pages, and their size.
_MADV_HUGEPAGE, _HUGE_PAGE = 14, 2 << 20


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    """The C library's ``madvise`` (``None`` where there is none: not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    function.restype = ctypes.c_int
    return function


def advise_huge_pages(address: int, nbytes: int) -> bool:
    """Advise huge pages for the whole 2 MiB pages inside ``[address, address + nbytes)``.

    Returns whether the kernel took the advice (not where its transparent huge pages are off).
    """
    madvise = _madvise()
    start = -(-address // _HUGE_PAGE) * _HUGE_PAGE
    stop = (address + nbytes) // _HUGE_PAGE * _HUGE_PAGE
    if madvise is None or stop <= start:
        return False
    return madvise(start, stop - start, _MADV_HUGEPAGE) == 0


def _uses(storage: torch.UntypedStorage) -> int:
    """How many tensors and storage objects use ``storage``'s memory (0 where unknown)."""
    return 0 if _storage_use_count is None else int(_storage_use_count(storage._cdata))


def row_parts(rows: Sequence[RowRange]) -> list[tuple[slice, slice, slice]]:
    """The index ``[first:stop, :, row_start:row_stop]`` of each of `row_runs`."""
    return [
        (slice(first, stop), slice(None), slice(row_start, row_stop))
        for first, stop, (row_start, row_stop) in row_runs(rows)
    ]


def row_runs(rows: Sequence[RowRange]) -> list[tuple[int, int, RowRange]]:
    """Consecutive equal nonempty entries of ``rows`` as ``(first, stop, range)``.

    Rows ``[first, stop)`` of a result span the same map rows: one call serves them (the gate
    copies, and in deep layers every copy). Empty ranges are left out.
    """
    runs: list[tuple[int, int, RowRange]] = []
    for index, row_range in enumerate(rows):
        if row_range[1] <= row_range[0]:
            continue
        if runs and runs[-1][2] == row_range and runs[-1][1] == index:
            runs[-1] = (runs[-1][0], index + 1, row_range)
        else:
            runs.append((index, index + 1, row_range))
    return runs
