"""``OutputPool`` results are zero where promised across dtypes and after smaller results.

Cases the model-based test of ``test_output_pool.py`` (results of one dtype, records that match
their results) leaves out or rarely draws, each on memory that held another result:

- a pool whose ``slack`` lets a float32 result take the memory of a recorded float64 result of
  the same shape (twice its bytes): the recorded rows are rows of the float64 layout, which
  the float32 result's rows do not match, so all of them are cleared;
- a smaller zero result on memory that a larger result wrote everywhere: the bytes after it
  stay as they were until cleared, so a later larger result on the same memory must still be
  zero there;
- a record with fewer rows than its result says nothing of the other rows: it is ignored.
"""

from __future__ import annotations

import pytest
import torch

from ctc_plugin.ctc.workspace import OutputPool


def _outside(shape: tuple[int, ...], rows: list[tuple[int, int]]) -> torch.Tensor:
    """Where a (B, channels, H, W) result lies outside ``rows`` (one range per row)."""
    outside = torch.ones(shape, dtype=torch.bool)
    for row, (first, stop) in enumerate(rows):
        outside[row, :, first:stop] = False
    return outside


def test_a_result_of_another_dtype_on_recorded_memory_is_zero_outside_its_rows():
    pool = OutputPool(slack=2.0)
    shape = (2, 1, 4, 4)
    wide = pool.zeros(shape, torch.zeros(1, dtype=torch.float64))
    wide.fill_(7.0)
    pool.record(wide, [(0, 4), (0, 4)])
    pointer = wide.data_ptr()
    del wide
    rows = [(1, 2), (0, 0)]
    narrow = pool.zeros_outside(shape, torch.zeros(1, dtype=torch.float32), rows)
    assert narrow.data_ptr() == pointer and narrow.dtype == torch.float32
    assert not bool(narrow[_outside(shape, rows)].any())
    narrow[~_outside(shape, rows)] = 1.0
    pool.record(narrow, rows)
    del narrow
    again = pool.zeros(shape, torch.zeros(1, dtype=torch.float64))  # back to float64
    assert not bool(again.any())


@pytest.mark.parametrize("recorded", [False, True], ids=["unrecorded", "recorded"])
@pytest.mark.parametrize("kept", [[], [(2, 4)]], ids=["zeros", "zeros outside rows"])
def test_a_smaller_zero_result_leaves_the_larger_one_after_it_zero(kept, recorded):
    """A 12-row map written everywhere and let go, a 9-row zero result on its memory (the pool
    serves it whole) written on its rows (and recorded, or not), then the 12-row map again:
    zero everywhere."""
    pool = OutputPool(slack=1.5)
    like = torch.zeros(1)
    large = pool.empty((1, 1, 12, 16), like).fill_(5.0)
    pointer = large.data_ptr()
    del large
    small = pool.zeros_outside((1, 1, 9, 16), like, kept)
    assert small.data_ptr() == pointer
    assert not bool(small[_outside(small.shape, kept)].any())
    small[~_outside(small.shape, kept)] = 1.0
    if recorded:
        pool.record(small, kept or [(0, 0)])
    del small
    again = pool.zeros((1, 1, 12, 16), like)
    assert again.data_ptr() == pointer
    assert not bool(again.any())


def test_a_record_with_fewer_rows_than_the_result_is_ignored():
    pool = OutputPool()
    like = torch.zeros(1)
    out = pool.zeros((3, 1, 4, 4), like)
    out.fill_(3.0)
    pool.record(out, [(0, 1), (0, 1)])  # no range for the third row
    pointer = out.data_ptr()
    del out
    again = pool.zeros((3, 1, 4, 4), like)
    assert again.data_ptr() == pointer
    assert not bool(again.any())
