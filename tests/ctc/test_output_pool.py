"""The sparse pass's memory for results (``ctc_plugin.ctc.workspace.OutputPool``).

Results are carved from chunks of memory that the pool keeps, reused once nothing else holds
them, given back to the system where the pool would hold more than its results ever used at
once, and cleared only where they may be nonzero. A closed pool leaves the chunks no result uses
to the next pool (``SpareChunks``).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ctc_plugin.ctc.workspace import (
    SPARE_CHUNKS,
    OutputPool,
    SpareChunks,
    fresh_memory,
    row_runs,
)

#: One MiB, in float32 values.
MIB = 1 << 18

#: Spare chunks are kept only where the kernel can take their pages back (Linux's MADV_FREE).
linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="spare chunks are kept on Linux"
)


def test_the_pool_reuses_memory_only_when_nothing_else_holds_it():
    pool = OutputPool()
    like = torch.zeros(1)
    first = pool.empty((4, 16), like)
    pointer = first.data_ptr()
    view = first[1:]
    del first
    assert pool.empty((4, 16), like).data_ptr() != pointer  # the view still holds it
    del view
    again = pool.empty((16, 4), like)  # same size, another shape: the same memory
    assert again.data_ptr() == pointer and again.shape == (16, 4) and again.is_contiguous()
    array = again.numpy()
    del again
    assert pool.empty((64,), like).data_ptr() != pointer  # a NumPy array still holds it
    del array
    assert pool.empty((64,), like).data_ptr() == pointer


def test_a_request_takes_the_smallest_free_buffer_that_is_not_much_larger():
    pool = OutputPool(slack=1.5)
    like = torch.zeros(1)
    small, large = pool.empty((160,), like), pool.empty((224,), like)  # 640 and 896 bytes
    small_pointer, large_pointer = small.data_ptr(), large.data_ptr()
    del small, large
    assert pool.empty((144,), like).data_ptr() == small_pointer  # 640 fits 576 better than 896
    taken = pool.empty((192,), like)  # 896 <= 1.5 * 768: the larger one serves it
    assert taken.data_ptr() == large_pointer and taken.shape == (192,)
    del taken
    # 640 > 1.5 * 384: carved from the lowest memory no result uses, the small buffer given up
    carved = pool.empty((96,), like)
    assert carved.data_ptr() == small_pointer
    assert sorted(b.base.numel() for b in pool._held) == [384, 896]


def test_smaller_results_are_carved_from_memory_a_larger_one_left():
    pool = OutputPool()
    like = torch.zeros(1)
    large = pool.empty((1024,), like)
    start = large.data_ptr()
    del large
    a, b = pool.empty((256,), like), pool.empty((200,), like)  # 1 KiB and 800 bytes
    assert a.data_ptr() == start and b.data_ptr() == start + 1024
    c = pool.empty((5,), like)  # the next 64-byte boundary after b
    assert c.data_ptr() == start + 1024 + 832
    assert len(pool._chunks) == 1


def test_a_result_larger_than_every_stretch_gets_a_fresh_chunk_and_unused_chunks_go():
    pool = OutputPool()
    like = torch.zeros(1)
    kept = pool.empty((1024,), like)
    small = pool.empty((1024,), like)
    del small
    first_chunk = pool._chunks[0]
    big = pool.empty((8 * MIB,), like)  # 8 MiB: more than the first chunk's 2 MiB
    assert len(pool._chunks) == 2 and pool._chunks[1].size >= 8 << 20
    del kept, big
    pool.empty((64 * MIB,), like)  # no chunk has room: both go, as nothing uses them
    assert len(pool._chunks) == 1 and pool._chunks[0] is not first_chunk


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="gives memory back on Linux")
def test_the_pool_holds_no_more_resident_memory_than_its_results_used_at_once():
    """``a`` and ``b`` (8 MiB each) are alive at once, then ``b`` and ``c`` (12 MiB): carving
    ``c`` after ``b`` leaves ``a``'s 8 MiB unused, and the pool would hold 28 MiB where its
    results never used more than 20 at once, so ``a``'s memory goes back to the system (it
    reads as zeros afterwards); the results in use keep their values."""
    pool = OutputPool(give_back_unit=4096)
    like = torch.zeros(1)
    a, b = pool.empty((8 * MIB,), like).fill_(1.0), pool.empty((8 * MIB,), like).fill_(2.0)
    del a
    c = pool.empty((12 * MIB,), like).fill_(3.0)
    (chunk,) = pool._chunks
    assert chunk.resident_bytes() == 20 << 20  # chunks start on a huge page
    assert not chunk.array[: 8 << 20].any()  # given back: zeros
    assert bool((b == 2.0).all()) and bool((c == 3.0).all())
    assert all(buffer.offset >= 8 << 20 for buffer in pool._held)  # a's buffer is given up


@linux_only
def test_a_closed_pool_leaves_its_chunk_and_records_to_the_next_which_clears_what_it_promises():
    """The next pool writes the same memory, which holds the last pool's values (or zeros,
    where the kernel took a page back). It takes the last pool's records along: a result that
    was recorded is cleared on its recorded rows only, and one written after its record (the
    version counter moved) is cleared whole."""
    spares = SpareChunks()
    like = torch.zeros(1)
    first_pool = OutputPool(spares=spares)
    recorded = first_pool.zeros_outside((2, 3, 8, 8), like, [(0, 8), (0, 8)])
    written = first_pool.zeros_outside((2, 3, 4, 4), like, [(0, 4), (0, 4)])
    recorded.zero_()[0, :, 1:3] = 7.0
    first_pool.record(recorded, [(1, 3), (0, 0)])
    first_pool.record(written, [(0, 1), (0, 0)])
    written.fill_(5.0)  # after its record: the record no longer holds
    pointers = recorded.data_ptr(), written.data_ptr()
    del recorded, written
    first_pool.close()
    assert len(spares) == 1 and not first_pool._chunks
    pool = OutputPool(spares=spares)
    cleared = []
    zero_ = torch.Tensor.zero_

    def counting_zero_(tensor):
        cleared.append(tensor.numel())
        return zero_(tensor)

    with mock.patch.object(torch.Tensor, "zero_", counting_zero_):
        again = pool.zeros((2, 3, 8, 8), like)
    assert again.data_ptr() == pointers[0] and len(spares) == 0
    assert not bool(again.any())
    assert sum(cleared) == 3 * 2 * 8  # the recorded rows of the first copy only
    outside = pool.zeros_outside((2, 3, 4, 4), like, [(2, 4), (0, 0)])
    assert outside.data_ptr() == pointers[1]
    inside = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    inside[0, :, 2:4] = True
    assert not bool(outside[~inside].any())


def test_a_chunk_that_a_result_still_uses_is_not_left_to_the_next_pool():
    spares = SpareChunks()
    pool = OutputPool(spares=spares)
    kept = pool.empty((4, 64), torch.zeros(1)).fill_(3.0)
    pool.close()
    assert len(spares) == 0 and not pool._chunks and not pool._held
    taken = OutputPool(spares=spares).empty((4, 64), torch.zeros(1)).fill_(5.0)
    assert taken.data_ptr() != kept.data_ptr() and bool((kept == 3.0).all())


@linux_only
def test_spares_keep_the_newest_chunks_and_hand_out_the_smallest_that_fits():
    spares = SpareChunks(most=2)
    like = torch.zeros(1)
    pools = [OutputPool(spares=spares) for _ in range(3)]
    for pool, numel in zip(pools, (MIB, 2 * MIB, 3 * MIB)):  # 4, 8 and 12 MiB chunks
        pool.empty((numel,), like)
    sizes = [pool._chunks[0].size for pool in pools]
    for pool in pools:  # three passes at once (threads) close
        pool.close()
    assert len(spares) == 2  # the oldest, smallest chunk went
    assert spares.take(1 << 20).size == sizes[1]
    assert spares.take(sizes[2] + 1) is None and len(spares) == 1
    spares.release()
    assert len(spares) == 0
    assert SpareChunks(most=0).take(1) is None


@linux_only
def test_a_pool_on_a_spare_chunk_keeps_what_the_last_pool_had_resident():
    """The last pool's results used 20 MiB at once: the next pool, on its chunk, does not give
    back memory for its first, smaller result (it would touch it again right after)."""
    spares = SpareChunks()
    like = torch.zeros(1)
    first_pool = OutputPool(spares=spares, give_back_unit=4096)
    a, b = first_pool.empty((8 * MIB,), like), first_pool.empty((8 * MIB,), like)
    (chunk,) = first_pool._chunks
    del a, b
    first_pool.close()
    pool = OutputPool(spares=spares, give_back_unit=4096)
    pool.empty((4 * MIB,), like)
    assert pool._chunks == [chunk] and chunk.resident_bytes() == 16 << 20


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_keeps_no_spare_chunks_and_is_not_blocked_by_the_parents_lock():
    """The parent holds the lock at the fork (as another of its threads might): the child
    starts with nothing kept and a lock of its own."""
    pool = OutputPool(spares=SPARE_CHUNKS)
    pool.empty((1024,), torch.zeros(1))
    pool.close()
    kept = len(SPARE_CHUNKS)
    with SPARE_CHUNKS._lock:
        child = os.fork()
        if child == 0:  # the child: exit status 0 only with a free lock and nothing kept
            free = SPARE_CHUNKS._lock.acquire(blocking=False)
            os._exit(0 if free and not SPARE_CHUNKS._chunks else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(SPARE_CHUNKS) == kept  # the parent's are untouched


def test_results_on_other_devices_and_empty_ones_get_memory_of_their_own():
    """Off the CPU the device's allocator caches memory itself: nothing is held or carved."""
    pool = OutputPool()
    like = torch.zeros(1, device="meta")
    out = pool.zeros((2, 3, 4, 4), like)
    assert out.device.type == "meta" and out.shape == (2, 3, 4, 4)
    for dtype in (torch.float32, torch.float64):
        empty = pool.zeros((0, 3, 4, 4), torch.zeros(1, dtype=dtype))
        assert empty.shape == (0, 3, 4, 4) and empty.dtype == dtype
    assert not pool._chunks and not pool._held


def test_a_zero_result_clears_only_the_rows_recorded_while_nothing_wrote_since():
    """``zeros`` on reused memory clears only the rows its last result recorded as possibly
    nonzero: a value left elsewhere (written behind the version counter's back, which no rule
    of the pass does) survives, which shows that nothing else was cleared; any tracked write
    after the record clears the whole buffer."""
    pool = OutputPool()
    like = torch.zeros(1)
    first = pool.empty((2, 3, 4, 4), like)
    first.fill_(1.0)
    pool.record(first, [(0, 2), (1, 3)])
    first[1, :, 3] = 2.0  # a tracked write after the record: the record no longer holds
    del first
    second = pool.zeros((2, 3, 4, 4), like)
    assert not bool(second.any())
    second[0, :, 0:2], second[1, :, 1:3] = 1.0, 2.0
    pool.record(second, [(0, 2), (1, 3)])
    second.data[1, 0, 3, 0] = 7.0  # .data: the same memory, another version counter
    pointer = second.data_ptr()
    del second
    third = pool.zeros((4, 3, 2, 4), like)  # another shape on the same memory
    assert third.data_ptr() == pointer
    assert third.count_nonzero() == 1 and third.view(-1)[1 * 48 + 3 * 4] == 7.0  # [1, 0, 3, 0]


def test_a_zero_result_larger_than_the_last_one_on_its_buffer_is_zero_everywhere():
    """A result may be smaller than its buffer: what lies after it (an earlier, larger
    result's values) is not covered by its record, and must be cleared all the same."""
    pool = OutputPool(slack=1.5)
    like = torch.zeros(1)
    large = pool.empty((1, 1, 12, 16), like)
    large.fill_(5.0)
    pool.record(large, [(0, 12)])
    pointer = large.data_ptr()
    del large
    small = pool.empty((1, 1, 9, 16), like)  # the same buffer: its last three rows hold 5
    assert small.data_ptr() == pointer
    small.fill_(1.0)
    pool.record(small, [(0, 9)])
    del small
    assert not bool(pool.zeros((1, 1, 12, 16), like).any())
    middle = pool.zeros((1, 1, 10, 16), like)  # after a clearing: known zero beyond it
    middle[0, 0, 2:4] = 3.0
    pool.record(middle, [(2, 4)])
    del middle
    assert not bool(pool.zeros((1, 1, 12, 16), like).any())


def _vm_flags(address: int) -> list[str]:
    """The ``VmFlags`` of the mapping of this process that holds ``address`` (Linux)."""
    mapping = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0] if line.strip() else ""
        if "-" in head and not head.endswith(":"):
            low, high = (int(part, 16) for part in head.split("-"))
            mapping = low <= address < high
        elif head == "VmFlags:" and mapping:
            return line.split()[1:]
    raise AssertionError("no mapping holds the address")


def test_fresh_memory_does_not_ask_for_huge_pages():
    # A first touch of huge pages took 10 s per GiB against 0.4 s for 4 KiB pages on this
    # project's machine (the kernel compacts memory for them on the page fault)
    if not Path("/proc/self/smaps").exists():
        pytest.skip("no /proc/self/smaps on this system")
    fresh = fresh_memory(8 << 20, torch.device("cpu"))
    assert fresh.dtype == torch.uint8 and fresh.numel() == 8 << 20
    assert "hg" not in _vm_flags(fresh.data_ptr())  # MADV_HUGEPAGE shows as "hg"


def test_row_runs_join_equal_neighbours_and_leave_out_empty_rows():
    rows = [(0, 5), (0, 5), (0, 0), (2, 3), (2, 3), (0, 5)]
    assert row_runs(rows) == [(0, 2, (0, 5)), (3, 5, (2, 3)), (5, 6, (0, 5))]


#: Shapes the pool's memory is drawn for in the model-based test (two share a size; whole
#: 4 KiB pages, which the pool gives back in the test, lie in most; the last needs a chunk of
#: its own after the others).
_SHAPES = [(3, 2, 6, 256), (2, 3, 6, 256), (3, 2, 5, 256), (2, 2, 3, 64), (2, 4, 8, 8192)]


@st.composite
def _pool_steps(draw):
    """A sequence of requests to a pool, each with the rows its caller writes."""
    steps = []
    for _ in range(draw(st.integers(3, 12))):
        shape = draw(st.sampled_from(_SHAPES))
        kind = draw(st.sampled_from(["empty", "zeros", "zeros_outside"]))
        rows = []
        for _ in range(shape[0]):
            first = draw(st.integers(0, shape[2]))
            rows.append((first, draw(st.integers(first, shape[2]))))
        record = draw(st.sampled_from(["record", "record, then write outside", "no record"]))
        close = draw(st.integers(0, 5)) == 0  # then a new pool on the chunks it leaves
        steps.append((shape, kind, rows, record, draw(st.booleans()), close))
    return steps


@settings(max_examples=150, deadline=None)
@given(_pool_steps())
def test_zero_results_are_zero_where_promised_whatever_came_before(steps):
    """Model-based: whatever results, records and writes came before on the same memory,
    ``zeros`` is zero everywhere and ``zeros_outside`` is zero outside its rows. Each caller
    writes nonzero values on its rows (``empty``: everywhere), records them (or writes outside
    them afterwards, through the result: a tracked write), and keeps its result or lets it go.
    Carving, memory given back to the system and fresh chunks all happen along the way, and
    now and then the pool closes and a new one takes the chunks it leaves."""
    spares = SpareChunks()
    pool = OutputPool(slack=1.5, give_back_unit=4096, spares=spares)
    like = torch.zeros(1)
    kept = []
    for shape, kind, rows, record, keep, close in steps:
        if kind == "empty":
            out = pool.empty(shape, like)
            out.fill_(7.0)
            rows = [(0, shape[2])] * shape[0]
        elif kind == "zeros":
            out = pool.zeros(shape, like)
            assert not bool(out.any())
        else:
            out = pool.zeros_outside(shape, like, rows)
            inside = torch.zeros(shape, dtype=torch.bool)
            for row, (first, stop) in enumerate(rows):
                inside[row, :, first:stop] = True
            assert not bool(out[~inside].any()), "nonzero outside the rows"
        for row, (first, stop) in enumerate(rows):
            out[row, :, first:stop] = float(row + 1)
        if record != "no record":
            pool.record(out, rows)
        if record == "record, then write outside":
            out.view(-1)[-1] = 9.0
        if keep:
            kept.append((out, out.clone()))
        if close:
            del out
            pool.close()
            pool = OutputPool(slack=1.5, give_back_unit=4096, spares=spares)
        else:
            del out
        _assert_pool_knows_its_zeros(pool)
    for held, when_made in kept:
        assert torch.equal(held, when_made), "a result still held was overwritten"


def _assert_pool_knows_its_zeros(pool: OutputPool) -> None:
    """What the pool believes zero is zero: in each chunk, the bytes outside its buffers and
    its loose stretches, and in each free buffer, the bytes after ``dirty_end`` and, where its
    record holds, the bytes outside the recorded rows."""
    chunks = pool._chunks + list(pool.spares._chunks)
    for chunk in chunks:
        buffers = [b for b in pool._held if b.chunk is chunk] + chunk.buffers
        known_zero = np.ones(chunk.size, dtype=bool)
        for start, stop in chunk.loose:
            known_zero[start:stop] = False
        for buffer in buffers:
            known_zero[buffer.offset : buffer.end] = False
            if not buffer.free():
                continue
            bytes_ = chunk.array[buffer.offset : buffer.end]
            assert not bytes_[buffer.dirty_end :].any(), "nonzero after dirty_end"
            recorded = buffer.recorded()
            if recorded is not None:
                dtype, shape, rows = recorded
                result = torch.from_numpy(bytes_.copy())[: math.prod(shape) * dtype.itemsize]
                result = result.view(dtype).view(shape)
                for row, (first, stop) in enumerate(rows):
                    result[row, :, first:stop] = 0
                assert not bool(result.any()), "nonzero outside the recorded rows"
        assert not chunk.array[known_zero].any(), "nonzero outside buffers and loose stretches"


def test_zeros_outside_clears_only_the_recorded_rows_it_does_not_keep():
    """On memory whose last result was recorded, ``zeros_outside`` clears the recorded rows
    less the new ones: a value planted behind the version counter's back in rows neither
    recorded nor kept survives (nothing else was cleared), and a layer whose rows cover the
    whole map clears nothing at all."""
    pool = OutputPool()
    like = torch.zeros(1)
    first = pool.zeros((2, 1, 6, 1), like)
    first[0, :, 1:3], first[1, :, 0:6] = 1.0, 2.0
    pool.record(first, [(1, 3), (0, 6)])
    first.data[0, 0, 5, 0] = 4.0  # outside the record: the pool believes it zero
    del first
    second = pool.zeros_outside((2, 1, 6, 1), like, [(2, 6), (0, 2)])
    assert second[0, 0, :, 0].tolist() == [0, 0, 1, 0, 0, 4]  # row 1 cleared, 2-5 kept
    assert second[1, 0, :, 0].tolist() == [2, 2, 0, 0, 0, 0]
    second[0, :, 2:6], second[1, :, 0:2] = 5.0, 6.0
    pool.record(second, [(2, 6), (0, 2)])
    del second
    third = pool.zeros_outside((2, 1, 6, 1), like, [(0, 6), (0, 6)])
    assert third[0, 0, :, 0].tolist() == [0, 0, 5, 5, 5, 5]  # nothing cleared
    assert third[1, 0, :, 0].tolist() == [6, 6, 0, 0, 0, 0]


def test_off_the_cpu_each_result_is_memory_of_its_own_on_that_device() -> None:
    """Other devices' allocators cache memory: the pool holds nothing there (``meta`` here, a
    device without values, stands in for a GPU; ``tests/test_cuda.py`` runs the CUDA pass)."""
    pool = OutputPool()
    like = torch.empty(0, dtype=torch.float64, device="meta")
    for result in (
        pool.zeros((2, 3, 4, 5), like),
        pool.zeros_outside((2, 3, 4, 5), like, [(0, 2), (1, 3)]),
    ):
        assert result.device.type == "meta" and result.dtype == torch.float64
        assert result.shape == (2, 3, 4, 5) and result.is_contiguous()
    assert pool._chunks == [] and pool._held == []
