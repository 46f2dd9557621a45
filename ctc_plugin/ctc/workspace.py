"""Reusable memory for the speed-ups: scratch buffers, and results' memory once it is free again."""

from __future__ import annotations

import ctypes
import functools
import itertools
import math
import mmap
import os
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = [
    "SPARE_CHUNKS",
    "OutputPool",
    "RowRange",
    "SpareChunks",
    "Workspace",
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

#: Linux's ``madvise`` advice for giving pages back and for letting the kernel take them back
#: when it needs memory, and the size of a page.
_MADV_DONTNEED, _MADV_FREE, _PAGE = 4, 8, mmap.PAGESIZE

#: Rows ``[first, stop)`` of one row of a (B, channels, H, W) result; empty where ``stop <= first``.
RowRange = tuple[int, int]


@dataclass(eq=False)
class _Chunk:
    """A piece of fresh memory that an `OutputPool` carves its buffers from.

    Attributes:
        memory: The bytes (a uint8 tensor from `fresh_memory`).
        array: The same bytes as a NumPy array: a buffer is a tensor made from a slice of it,
            with a storage (and so a use count and a version counter) of its own that keeps the
            chunk alive as long as anything uses it.
        resident: The stretches ``(start, stop)`` that have been touched and not given back,
            sorted and disjoint.
        live_peak: The most bytes the results of the pools that used it had in use at once
            (set when a pool hands it to `SpareChunks`).
        buffers: The free buffers a closed pool handed over with it, with what is known to be
            zero in them (the next pool that takes the chunk takes them too).
        loose: The stretches ``(start, stop)`` outside every buffer that may hold nonzero bytes,
            sorted and disjoint: the rest of the bytes outside buffers are zero.
        narrowest: The byte width of the narrowest values whose zeros the chunk was told of
            (`OutputPool.record`), ``None`` for none. Those are zeros of values: where a copy
            value is negative, a ReLU pattern leaves -0.0, whose float32 bytes ``00 00 00 80``
            read in a float64 are the subnormal 1.06e-314 (which ``"reference"`` sharing counts
            as a value: ``ceil(10 z)`` is 1), so for wider values the chunk is all dirty
            (`OutputPool._dirty_for`). In values as wide or narrower, -0.0 reads as 0 or -0.0.
    """

    memory: torch.Tensor
    array: np.ndarray
    resident: list[tuple[int, int]] = field(default_factory=list)
    live_peak: int = 0
    buffers: list[_Buffer] = field(default_factory=list)
    loose: list[tuple[int, int]] = field(default_factory=list)
    narrowest: int | None = None

    @property
    def size(self) -> int:
        """How many bytes the chunk has."""
        return self.memory.numel()

    def touch(self, start: int, stop: int) -> None:
        """Note that ``[start, stop)`` is (about to be) written: resident from now on."""
        self.resident = _merged([*self.resident, (start, stop)])

    def give_back(self, start: int, stop: int, unit: int) -> int:
        """Return the whole ``unit``-sized pages of ``[start, stop)`` to the system.

        They read as zeros afterwards and cost page faults on their next touch (Linux's
        ``MADV_DONTNEED``; nothing is given back where there is no ``madvise``). Returns how
        many resident bytes were given back.
        """
        address = self.memory.data_ptr()
        first = -(-(address + start) // unit) * unit - address
        end = (address + stop) // unit * unit - address
        madvise = _madvise()
        if madvise is None or end <= first:
            return 0
        if madvise(address + first, end - first, _MADV_DONTNEED) != 0:
            return 0
        self.loose, _ = _split(self.loose, first, end)  # zeros now
        self.resident, given = _split(self.resident, first, end)
        return sum(high - low for low, high in given)

    def resident_bytes(self) -> int:
        """How many of its bytes have been touched and not given back."""
        return sum(stop - start for start, stop in self.resident)

    def loosen(self, start: int, stop: int) -> None:
        """Note that ``[start, stop)``, outside every buffer now, may hold nonzero bytes."""
        if stop > start:
            self.loose = _merged([*self.loose, (start, stop)])

    def take_loose(self, start: int, stop: int) -> list[tuple[int, int]]:
        """The loose stretches inside ``[start, stop)``, which a new buffer takes over."""
        self.loose, inside = _split(self.loose, start, stop)
        return inside

    def free_lazily(self) -> bool:
        """Let the kernel take the chunk's pages back whenever it needs memory.

        Until it does, they are written again without page faults; once it has, they read as
        zeros (Linux's ``MADV_FREE``: any page may hold its old bytes or zeros until written).
        Returns whether the kernel took the advice (not where there is no ``madvise``).
        """
        madvise = _madvise()
        if madvise is None:
            return False
        return madvise(self.memory.data_ptr(), self.size, _MADV_FREE) == 0


class SpareChunks:
    """Chunks of memory that finished passes left, kept for the next pass's `OutputPool`.

    A pass's pool writes about its results' peak of memory (0.8 GiB for ResNet-50 at 224x224
    with 66 copies); in fresh memory each page costs a fault on first touch, which on this
    project's machine took longer than the pass's own convolutions on it. A pool that closes
    hands its chunks here (those no result uses any more) and the next pool takes one instead
    of fresh memory: the passes of one call (a batch, features in chunks) and calls image after
    image write the same pages. While kept, a chunk's pages are the kernel's to take back
    whenever it needs memory (`_Chunk.free_lazily`, Linux's ``MADV_FREE``): they still count in
    the process's resident memory until it does (``LazyFree`` in ``/proc/<pid>/smaps_rollup``).
    Where that advice is missing (not Linux), nothing is kept. `release` lets them go at once.

    Attributes:
        most: How many chunks are kept at most (the oldest go first): one per thread that runs
            passes at the same time is enough.
    """

    def __init__(self, most: int = 2) -> None:
        self.most = most
        self._lock = threading.Lock()
        self._chunks: list[_Chunk] = []

    def take(self, nbytes: int) -> _Chunk | None:
        """The smallest kept chunk of at least ``nbytes`` bytes (no longer kept), or ``None``."""
        with self._lock:
            fitting = [chunk for chunk in self._chunks if chunk.size >= nbytes]
            if not fitting:
                return None
            chunk = min(fitting, key=lambda c: c.size)
            self._chunks.remove(chunk)
            return chunk

    def keep(self, chunk: _Chunk) -> None:
        """Keep ``chunk`` for a later pool, its pages lazily freed; drop it where they cannot be."""
        if self.most <= 0 or not chunk.free_lazily():
            return
        with self._lock:
            self._chunks.append(chunk)
            del self._chunks[: max(0, len(self._chunks) - self.most)]

    def release(self) -> None:
        """Let every kept chunk go (its memory returns to the system once nothing uses it)."""
        with self._lock:
            self._chunks.clear()

    def forget_in_child(self) -> None:
        """In a process just forked: keep nothing, with a new lock.

        Another thread of the parent may have held the lock at the fork, and the kept pages
        are the parent's, shared copy-on-write.
        """
        self._lock = threading.Lock()
        self._chunks = []

    def __len__(self) -> int:
        """How many chunks are kept."""
        with self._lock:
            return len(self._chunks)


@dataclass
class _Buffer:
    """One buffer of an `OutputPool`: its place in a chunk, and what is known to be zero in it.

    Attributes:
        base: The memory, as bytes. Results are views of it, so they share its version counter:
            any write into a result (or a view of one) shows in ``base._version``.
        chunk: The chunk it was carved from.
        offset: Where in the chunk it starts.
        dirty_end: Every byte from this one on is known to be zero (results start at the
            buffer's first byte and are written only inside themselves).
        written: Where the first ``dirty_end`` bytes may be nonzero, as ``(dtype, shape, rows per
            row, version)`` of the last result: valid while ``base._version`` is still
            ``version``; ``None``: anywhere.
    """

    base: torch.Tensor
    chunk: _Chunk
    offset: int
    dirty_end: int = 0
    written: tuple[torch.dtype, tuple[int, ...], tuple[RowRange, ...], int] | None = None

    def __post_init__(self) -> None:
        self._storage = self.base.untyped_storage()
        self._idle_uses = _uses(self._storage)  # the pool's own: its tensor and this object

    @property
    def end(self) -> int:
        """Where in the chunk it ends."""
        return self.offset + self.base.numel()

    def free(self) -> bool:
        """Whether nothing but the pool uses the memory."""
        return _uses(self._storage) == self._idle_uses

    def recorded(self) -> tuple[torch.dtype, tuple[int, ...], tuple[RowRange, ...]] | None:
        """The last record's ``(dtype, shape, rows)`` while nothing wrote since, else ``None``."""
        if self.written is None or self.base._version != self.written[3]:
            return None
        return self.written[:3]

    def clear_recorded(self) -> bool:
        """Clear the last record's rows, which leaves the buffer zero; ``False``: no record."""
        recorded = self.recorded()
        if recorded is None:
            return False
        dtype, shape, rows = recorded
        _clear_difference(_as_result(self.base, shape, dtype), rows, _NOTHING)
        self.written, self.dirty_end = None, 0
        return True


class OutputPool:
    """Memory for a pass's full-size results on a CPU, reused once nothing else holds it.

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

    Where results go: a request takes the smallest free buffer that holds it and is at most
    ``slack`` times its size (it keeps that buffer's record); else a new buffer is carved from
    the lowest stretch of held memory that no result uses (free buffers there are given up:
    a recorded one's rows are cleared, what another may hold becomes the chunk's loose
    stretches, so the new buffer is known zero beyond the last of them), so memory that held
    one large map holds several smaller ones later; else from a fresh chunk
    (with room for a few more such results: untouched memory costs nothing), and chunks that
    nothing uses (too small for this request) are let go first. So the fresh memory a pass pays
    page faults for is about the most its results use at one time, not every result's. Its
    resident memory stays within that most, too: where carving leaves stretches that no result
    uses between the ones in use, they are given back to the system (Linux's
    ``MADV_DONTNEED``, highest first, whole ``give_back_unit`` pages) before the pool holds more
    than its results ever used at once. On other devices (their allocators cache memory
    themselves), where torch's use count is missing and for empty results, each result gets
    memory of its own.

    With ``spares``, a chunk is taken from those that earlier pools left there before fresh
    memory is (it brings their most bytes in use at once, so what was resident stays, and its
    free buffers with their records), and `close` hands the pool's chunks back.

    Attributes:
        slack: How much larger than a request a free buffer that serves it whole may be.
        give_back_unit: Stretches are given back in whole pages of this many bytes (a page of
            the system's by default).
        spares: Where chunks come from before fresh memory and go when the pool closes
            (``None``: every chunk is fresh and goes with the pool).
    """

    def __init__(
        self,
        slack: float = 1.5,
        give_back_unit: int = _PAGE,
        spares: SpareChunks | None = None,
    ) -> None:
        self.slack = slack
        self.give_back_unit = give_back_unit
        self.spares = spares
        self._chunks: list[_Chunk] = []
        self._held: list[_Buffer] = []
        self._live_peak = 0

    def close(self) -> None:
        """Let go of every chunk; hand those that no result uses any more to ``spares``.

        A chunk that a result still uses (the model kept it) lives as long as that result. A
        chunk handed over takes its buffers along, with their records: the next pool's results
        on them clear only the rows the last ones recorded, not the whole buffer (nothing else
        can write to a kept chunk, and a page the kernel takes back reads as zeros).
        """
        used = self._chunks_in_use()
        for chunk in self._chunks:
            if self.spares is not None and id(chunk) not in used:
                chunk.live_peak = max(chunk.live_peak, self._live_peak)
                chunk.buffers = [buffer for buffer in self._held if buffer.chunk is chunk]
                self.spares.keep(chunk)
        self._chunks, self._held = [], []

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
                    width, chunk = result.element_size(), buffer.chunk
                    chunk.narrowest = min(width, chunk.narrowest or width)
                else:  # the bytes after the result may hold anything
                    buffer.written = None
                return

    def _take(
        self, shape: tuple[int, ...], like: torch.Tensor
    ) -> tuple[torch.Tensor, _Buffer | None]:
        """A result of ``shape`` and the held buffer it lies on (``None``: memory of its own)."""
        nbytes = math.prod(shape) * like.element_size()
        if like.device.type != "cpu" or _storage_use_count is None or nbytes == 0:
            own = torch.empty(nbytes, dtype=torch.uint8, device=like.device)
            return _as_result(own, shape, like.dtype), None
        self._dirty_for(like.element_size())
        buffer = self._free_buffer(nbytes)
        length = -(-nbytes // _ALIGNMENT) * _ALIGNMENT
        place = None if buffer is not None else self._unused_stretch(length)
        if buffer is None and place is None:
            self._let_go_of_unused_chunks()
            self._chunks.append(self._new_chunk(length))
            self._dirty_for(like.element_size())  # a spare chunk's zeros may be narrower
            buffer = self._free_buffer(nbytes)  # one that a spare chunk brought
            place = (self._chunks[-1], 0)
        if buffer is not None:
            out = _as_result(buffer.base, shape, like.dtype)
            self._note_live()
            return out, buffer
        buffer = self._carve(*place, length)
        out = _as_result(buffer.base, shape, like.dtype)
        self._note_live()
        self._stay_within_live_peak()
        return out, buffer

    def _dirty_for(self, width: int) -> None:
        """Take every chunk told of zeros of values narrower than ``width`` bytes as dirty.

        Its buffers lose their records and may be nonzero throughout, and the rest of what it
        has touched is loose (see `_Chunk.narrowest`): their bytes are cleared before a result
        of wider values is promised zero there. A pass of one dtype never comes here.
        """
        for chunk in self._chunks:
            if chunk.narrowest is None or chunk.narrowest >= width:
                continue
            buffers = [buffer for buffer in self._held if buffer.chunk is chunk]
            for buffer in buffers:
                buffer.written, buffer.dirty_end = None, buffer.base.numel()
            inside = _merged([(buffer.offset, buffer.end) for buffer in buffers])
            for start, stop in chunk.resident:
                for low, high in _outside_all(start, stop, inside):
                    chunk.loosen(low, high)
            chunk.narrowest = None

    def _free_buffer(self, nbytes: int) -> _Buffer | None:
        """The smallest free buffer that holds ``nbytes`` within ``slack``, or ``None``."""
        fitting = [
            buffer
            for buffer in self._held
            if nbytes <= buffer.base.numel() <= self.slack * nbytes and buffer.free()
        ]
        return min(fitting, key=lambda b: b.base.numel()) if fitting else None

    def _new_chunk(self, length: int) -> _Chunk:
        """A chunk for a result of ``length`` bytes: a spare one, else fresh memory with room.

        A spare chunk's buffers and loose stretches come with it. Fresh memory is zero where
        `fresh_memory` maps it (no loose stretch), else loose throughout.
        """
        spare = None if self.spares is None else self.spares.take(length)
        if spare is not None:
            self._live_peak = max(self._live_peak, spare.live_peak)
            self._held.extend(spare.buffers)
            spare.buffers = []
            return spare
        chunk_bytes = -(-(_CHUNK_ROOM * length) // _PAGE) * _PAGE
        memory = fresh_memory(chunk_bytes, torch.device("cpu"))
        loose = [] if _zeroed_on_cpu() else [(0, chunk_bytes)]
        return _Chunk(memory, memory.numpy(), loose=loose)

    def _note_live(self) -> None:
        """Update the most bytes that results have used at one time."""
        live = sum(b.base.numel() for b in self._held if not b.free())
        self._live_peak = max(self._live_peak, live)

    def _stay_within_live_peak(self) -> None:
        """Keep the pool's resident memory within the most bytes its results used at one time.

        Stretches that no result uses are given back to the system, highest first (the lower
        ones are taken first), until it is.
        """
        excess = sum(c.resident_bytes() for c in self._chunks) - self._live_peak
        if excess <= 0:
            return
        stretches = [
            (chunk_index, start, stop)
            for chunk_index, chunk in enumerate(self._chunks)
            for start, stop in self._unused_stretches(chunk)
        ]
        for chunk_index, start, stop in sorted(stretches, reverse=True):
            chunk = self._chunks[chunk_index]
            dropped = [
                b for b in self._held if b.chunk is chunk and start < b.end and b.offset < stop
            ]
            for buffer in dropped:  # what they may hold is loose (less the pages given back)
                chunk.loosen(buffer.offset, buffer.offset + buffer.dirty_end)
            given = chunk.give_back(start, stop, self.give_back_unit)
            if not given:  # they stay buffers
                for buffer in dropped:
                    chunk.take_loose(buffer.offset, buffer.end)
                continue
            self._held = [b for b in self._held if all(b is not d for d in dropped)]
            excess -= given
            if excess <= 0:
                return

    def _unused_stretch(self, length: int) -> tuple[_Chunk, int] | None:
        """Where the lowest stretch of ``length`` bytes or more that no result uses starts.

        ``(chunk, offset)``, or ``None`` where no chunk has such a stretch.
        """
        for chunk in self._chunks:
            for start, stop in self._unused_stretches(chunk):
                if stop - start >= length:
                    return chunk, start
        return None

    def _unused_stretches(self, chunk: _Chunk) -> list[tuple[int, int]]:
        """The stretches of ``chunk`` that no result uses, lowest first."""
        used = sorted((b.offset, b.end) for b in self._held if b.chunk is chunk and not b.free())
        stretches, start = [], 0
        for first, end in [*used, (chunk.size, chunk.size)]:
            if first > start:
                stretches.append((start, first))
            start = max(start, end)
        return stretches

    def _carve(self, chunk: _Chunk, offset: int, length: int) -> _Buffer:
        """A new buffer of ``length`` bytes at ``offset`` of ``chunk``, with what is known of it.

        The free buffers it overlaps are given up: a recorded one has its recorded rows cleared
        (it is then zero), the nonzero bytes another may hold become loose. The new buffer is
        known zero from the end of the last loose stretch inside it on; loose stretches that
        are a small part of it are cleared instead.
        """
        end = offset + length
        kept = []
        for buffer in self._held:
            if buffer.chunk is not chunk or buffer.end <= offset or buffer.offset >= end:
                kept.append(buffer)
            elif not buffer.clear_recorded():
                chunk.loosen(buffer.offset, buffer.offset + buffer.dirty_end)
        self._held = kept
        chunk.touch(offset, end)
        loose = chunk.take_loose(offset, end)
        if sum(stop - start for start, stop in loose) <= length * _CLEARED_AT_CARVING:
            for start, stop in loose:
                chunk.array[start:stop] = 0
            loose = []
        base = torch.from_numpy(chunk.array[offset:end])
        dirty_end = max((stop - offset for _, stop in loose), default=0)
        buffer = _Buffer(base, chunk, offset, dirty_end=dirty_end)
        self._held.append(buffer)
        return buffer

    def _let_go_of_unused_chunks(self) -> None:
        """Drop the chunks that no result uses (with their free buffers)."""
        used = self._chunks_in_use()
        self._chunks = [chunk for chunk in self._chunks if id(chunk) in used]
        self._held = [b for b in self._held if id(b.chunk) in used]

    def _chunks_in_use(self) -> set[int]:
        """The ``id`` of each chunk that a result still uses."""
        return {id(b.chunk) for b in self._held if not b.free()}


#: Buffers start at multiples of this many bytes of their chunk (a cache line).
_ALIGNMENT = 64

#: A fresh chunk has room for this many results of the request that needed it: untouched
#: memory costs nothing, and room beside a result lets the next ones lie next to it.
_CHUNK_ROOM = 4

#: A new buffer's loose stretches are cleared when it is carved where they take at most this
#: fraction of it (the buffer is then known zero); above, it is dirty up to the last one.
_CLEARED_AT_CARVING = 0.125


#: The chunks that the sparse passes' pools leave for the next pass (see `SpareChunks`);
#: ``SPARE_CHUNKS.release()`` lets them go.
SPARE_CHUNKS = SpareChunks()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=SPARE_CHUNKS.forget_in_child)


def _as_result(base: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """The start of a buffer's bytes as a contiguous tensor (a view: one version counter)."""
    nbytes = math.prod(shape) * dtype.itemsize
    return base[:nbytes].view(dtype).view(shape)


def _nbytes(tensor: torch.Tensor) -> int:
    """How many bytes a contiguous tensor takes."""
    return tensor.numel() * tensor.element_size()


def _outside_all(start: int, stop: int, stretches: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``[start, stop)`` outside every one of ``stretches`` (sorted, disjoint)."""
    parts = []
    for low, high in stretches:
        if low > start:
            parts.append((start, min(low, stop)))
        start = max(start, high)
        if start >= stop:
            return parts
    return [*parts, (start, stop)] if stop > start else parts


def _merged(stretches: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``stretches`` sorted, with those that touch or overlap joined."""
    joined: list[tuple[int, int]] = []
    for start, stop in sorted(stretches):
        if joined and start <= joined[-1][1]:
            joined[-1] = (joined[-1][0], max(joined[-1][1], stop))
        else:
            joined.append((start, stop))
    return joined


def _split(
    stretches: list[tuple[int, int]], start: int, stop: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Sorted disjoint ``stretches`` outside ``[start, stop)``, and their parts inside it."""
    outside, inside = [], []
    for first, end in stretches:
        outside += [(first, min(end, start)), (max(first, stop), end)]
        inside.append((max(first, start), min(end, stop)))
    return [(a, b) for a, b in outside if b > a], [(a, b) for a, b in inside if b > a]


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
    """``nbytes`` of new memory as a uint8 tensor: zeros on a CPU where `_zeroed_on_cpu`.

    On a CPU it is a private anonymous mapping of its own where the system has them (its pages
    read as zeros until written, and cost nothing until touched), else uninitialised memory of
    torch's. It does not ask for transparent huge pages (``MADV_HUGEPAGE``): where the kernel
    compacts memory for them on a page fault (its ``defrag`` setting ``madvise``, the default),
    or a virtual machine's host has taken back the free 2 MiB blocks they come from, a first
    touch costs far more than with 4 KiB pages (zeroing a fresh GiB took 10 s with huge pages
    against 0.4 s on this project's machine, ``python benchmarks/bench_sparse.py --repeats 1
    --fresh-memory``), and the pool reuses its memory, so page faults are rare anyway.
    """
    if device.type != "cpu":
        return torch.empty(nbytes, dtype=torch.uint8, device=device)
    if _zeroed_on_cpu() and nbytes > 0:
        mapping = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        memory = torch.from_numpy(np.frombuffer(mapping, dtype=np.uint8))  # keeps it mapped
    else:
        memory = torch.empty(nbytes, dtype=torch.uint8)
    return memory


def _zeroed_on_cpu() -> bool:
    """Whether `fresh_memory` on a CPU is a private anonymous mapping (zeros until written)."""
    return hasattr(mmap, "MAP_PRIVATE") and hasattr(mmap, "MAP_ANONYMOUS")


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
