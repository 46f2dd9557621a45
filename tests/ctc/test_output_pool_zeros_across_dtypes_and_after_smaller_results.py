"""``OutputPool`` results are zero where promised across dtypes and after smaller results.

Cases the model-based test of ``test_output_pool.py`` (results of one dtype, records that match
their results) leaves out or rarely draws, each on memory that held another result:

- a pool whose ``slack`` lets a float32 result take the memory of a recorded float64 result of
  the same shape (twice its bytes): the recorded rows are rows of the float64 layout, which
  the float32 result's rows do not match, so all of them are cleared;
- a smaller zero result on memory that a larger result wrote everywhere: the bytes after it
  stay as they were until cleared, so a later larger result on the same memory must still be
  zero there;
- a record with fewer rows than its result says nothing of the other rows: it is ignored;
- a record's zeros are zeros of its values (-0.0 among them), not zero bytes: memory recorded
  for float32 values is cleared before a float64 result is promised zero there.
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


def _negative_zeros_outside_a_float32_record(pool: OutputPool, shape, rows) -> int:
    """A float32 result that holds -0.0 outside its recorded rows (zero as a value: a ReLU
    pattern times a negative copy value), let go; returns where it lay."""
    narrow = pool.zeros(shape, torch.zeros(1, dtype=torch.float32))
    narrow.fill_(-0.0)
    for row, (first, stop) in enumerate(rows):
        narrow[row, :, first:stop] = 2.0
    pool.record(narrow, rows)
    pointer = narrow.data_ptr()
    del narrow
    return pointer


def test_negative_zeros_of_a_narrower_record_are_cleared_for_a_wider_result():
    """Found by the differential fuzzing (`tests/ctc/fuzz_models.py`, seed 264 after 263 other
    models, some in float32): a float32 -0.0 that a record counts as zero is the bytes 00 00 00
    80, which read in a float64 result are the subnormal 1.06e-314. The pool left them in a
    float64 result that it promised zero, and ``"reference"`` sharing, which counts every
    nonzero value (``ceil(10 z)`` is 1 for 1e-314), moved a score of the sparse pass by 0.05."""
    pool = OutputPool(slack=4.0)
    shape, rows = (2, 2, 4, 4), [(1, 2), (0, 0)]
    pointer = _negative_zeros_outside_a_float32_record(pool, shape, rows)
    wide = pool.zeros((2, 2, 4, 3), torch.zeros(1, dtype=torch.float64))
    assert wide.data_ptr() == pointer
    assert not bool(wide.view(torch.int64).any()), "nonzero bytes in a zero float64 result"


def test_negative_zeros_of_a_narrower_record_are_cleared_where_a_new_buffer_is_carved():
    """The same on memory carved anew: a recorded float32 buffer given up for a larger float64
    one had only its recorded rows cleared, and the new buffer was taken for zero bytes."""
    pool = OutputPool(slack=1.0)
    shape, rows = (2, 2, 4, 4), [(1, 2), (0, 0)]
    pointer = _negative_zeros_outside_a_float32_record(pool, shape, rows)
    wide = pool.zeros((2, 2, 4, 5), torch.zeros(1, dtype=torch.float64))
    assert wide.data_ptr() == pointer
    assert not bool(wide.view(torch.int64).any()), "nonzero bytes in a zero float64 result"


def test_negative_zeros_of_a_record_stay_zero_in_results_as_narrow_or_narrower():
    """A record's rows serve a result of the same width (float32) or a narrower one (bfloat16):
    -0.0 read there is 0 or -0.0, a zero."""
    for dtype in (torch.float32, torch.bfloat16):
        pool = OutputPool(slack=4.0)
        shape, rows = (2, 2, 4, 4), [(1, 2), (0, 0)]
        pointer = _negative_zeros_outside_a_float32_record(pool, shape, rows)
        again = pool.zeros((2, 2, 4, 3), torch.zeros(1, dtype=dtype))
        assert again.data_ptr() == pointer
        assert not bool(again.any())
