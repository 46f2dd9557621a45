"""A sparse convolution writes nothing outside its copies' boxes (``ctc_plugin.ctc.sparse``).

Outside a copy's output box, a crop rounded up in size (or a whole map) holds the convolution
of zeros: ``-0.0`` where an output is one product with a negative weight (a grouped 1x1
convolution with one input channel per group; the bytes 00 00 00 80 in float32), ``nan`` where
a weight is infinite. The result's memory is promised zero there (`OutputPool.record` takes the
boxes' rows), so a later result on that memory, cleared only on the recorded rows, kept those
bytes; found by differential fuzzing (seed 264: a grouped 1x1 convolution after an adaptive
max pooling).
"""

from __future__ import annotations

import pytest
import torch

from ctc_plugin.ctc.boxes import box_rows
from ctc_plugin.ctc.sparse import ConvCall, sparse_conv2d
from ctc_plugin.ctc.workspace import OutputPool

BITS = {torch.float32: torch.int32, torch.float64: torch.int64}


def _grouped_pointwise(dtype: torch.dtype, weight: float) -> ConvCall:
    """A 1x1 convolution, one input channel per group, on three copies.

    A small box, a box at the map's edge (its crop is shifted into the map) and a whole map.
    """
    x = torch.zeros(3, 2, 12, 12, dtype=dtype)
    x[0, :, 2:4, 3:5] = 1.0
    x[1, :, 9:12, 0:2] = 2.0
    x[2] = 0.5
    weights = torch.full((4, 1, 1, 1), weight, dtype=dtype)
    return ConvCall(x, weights, (1, 1), (0, 0), (1, 1), 2)


@pytest.mark.parametrize("size_steps", [1, 8])  # 1: whole maps, 8: crops rounded up
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("pooled", [False, True])
def test_each_copy_is_plus_zero_outside_its_box(size_steps, dtype, pooled):
    call = _grouped_pointwise(dtype, -1.0)
    results = OutputPool() if pooled else None
    out, boxes = sparse_conv2d(call, 1.0, size_steps, results=results)
    torch.testing.assert_close(out, call.dense(), rtol=0, atol=0)
    for copy, (r0, r1, c0, c1) in enumerate(boxes):
        outside = out[copy].view(BITS[dtype]).clone()
        outside[:, r0:r1, c0:c1] = 0
        assert not bool(outside.any()), f"copy {copy} has nonzero bytes outside its box"


@pytest.mark.parametrize("weight", [-1.0, float("inf")])
def test_a_zero_result_on_the_recorded_memory_is_zero(weight):
    """The next zero result on the pool's memory is cleared only on the recorded rows."""
    call = _grouped_pointwise(torch.float32, weight)
    pool = OutputPool()
    out, boxes = sparse_conv2d(call, 1.0, 8, results=pool)
    pool.record(out, box_rows(boxes))
    del out
    again = pool.zeros((3, 4, 12, 12), call.x)
    assert not bool(again.view(torch.int32).any())
