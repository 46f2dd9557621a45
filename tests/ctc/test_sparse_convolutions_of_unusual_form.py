"""Sparse convolutions of less common forms equal ``conv2d`` (``ctc_plugin.ctc.sparse``).

Forms the random convolutions of ``test_sparse.py`` rarely or never draw: a copy whose box lies
only in rows or columns that no window of a strided convolution reads, 1x1 convolutions with
padding or with a different stride per axis above the threshold where they become matrix
products on each copy's rows, that path without a pool, crops convolved a few copies at a time,
matrix products into non-contiguous maps, and ``conv2d`` called with one-element tuples. Each is
compared with ``F.conv2d`` (float64, 1e-12), and the pass with the spec.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctc_plugin.ctc import sparse
from ctc_plugin.ctc.sparse import ConvCall, pointwise_product, sparse_conv2d
from ctc_plugin.ctc.speedups import DEFAULT
from ctc_plugin.ctc.workspace import OutputPool

from .test_sparse import assert_zero_outside, grid
from .test_speedups import MODES, assert_same_as_spec


def _copies(height: int = 12, width: int = 12, seed: int = 0) -> torch.Tensor:
    """Five copies of 3 channels: a whole map, two boxes, a thin band and a zero copy."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 3, height, width, generator=generator, dtype=torch.float64)
    keep = torch.zeros(5, 1, height, width, dtype=torch.bool)
    keep[0] = True
    keep[1, :, 2:7, 3:9] = True
    keep[2, :, height // 2 :, : width // 2] = True
    keep[3, :, 4:6] = True
    return x * keep


def _assert_equals_conv2d(call: ConvCall, dense_above: float, results: OutputPool | None) -> None:
    expected = F.conv2d(call.x, call.weight, None, call.stride, call.padding, call.dilation)
    actual, boxes = sparse_conv2d(call, dense_above, 8, results=results)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    assert_zero_outside(expected, boxes)


def test_a_box_that_no_window_of_a_strided_convolution_reads_gives_a_zero_copy():
    """A 1x1 kernel of stride 2 reads the even rows and columns only: a copy nonzero only in
    column 1 (or row 3) has an empty output box in one axis and a nonempty one in the other,
    and is zero in the output (it once made a crop of negative size)."""
    x = torch.zeros(3, 2, 9, 9, dtype=torch.float64)
    x[0] = torch.rand(2, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x[1, :, 2:5, 1] = 1.0
    x[2, :, 3, 2:6] = 1.0
    weight = torch.rand(3, 2, 1, 1, dtype=torch.float64)
    for results in (None, OutputPool()):
        _assert_equals_conv2d(ConvCall(x, weight, (2, 2), (0, 0), (1, 1), 1), 1.0, results)
    kernel = torch.rand(3, 2, 2, 2, dtype=torch.float64)  # reads 2 of every 3 rows and columns
    x[1, :, 2:5, 1], x[1, :, 2:5, 2] = 0.0, 1.0
    _assert_equals_conv2d(ConvCall(x, kernel, (3, 3), (0, 0), (1, 1), 1), 1.0, OutputPool())


@pytest.mark.parametrize("dense_above", [0.0, 1.0])
@pytest.mark.parametrize("stride", [(2, 1), (1, 2), (1, 3)])
def test_pointwise_convolutions_with_a_stride_per_axis(stride, dense_above):
    """Above the threshold (0) a 1x1 convolution is a matrix product on each copy's rows of
    its strided input; below (1) the crops are convolved."""
    x = _copies(20, 16)
    weight = torch.randn(4, 3, 1, 1, dtype=torch.float64, generator=torch.Generator())
    call = ConvCall(x, weight, stride, (0, 0), (1, 1), 1)
    assert call.pointwise
    _assert_equals_conv2d(call, dense_above, OutputPool())


@pytest.mark.parametrize("dense_above", [0.0, 1.0])
def test_padded_pointwise_convolutions(dense_above):
    """A 1x1 convolution with padding is no matrix product of the input (the output is larger
    than the map); it is computed as a convolution on either side of the threshold."""
    x = _copies(12, 10)
    weight = torch.randn(4, 3, 1, 1, dtype=torch.float64, generator=torch.Generator())
    for padding in ((1, 1), (2, 0), (0, 3)):
        call = ConvCall(x, weight, (1, 1), padding, (1, 1), 1)
        _assert_equals_conv2d(call, dense_above, OutputPool())


def test_pointwise_convolutions_above_the_threshold_without_a_pool():
    """``sparse_conv2d`` without a pool computes dense layers into fresh memory."""
    x = _copies(12, 12)
    weight = torch.randn(4, 3, 1, 1, dtype=torch.float64, generator=torch.Generator())
    call = ConvCall(x, weight, (1, 1), (0, 0), (1, 1), 1)
    assert call.pointwise
    _assert_equals_conv2d(call, 0.0, None)


@pytest.mark.parametrize("crop_elements", [1, 700, 3000])
def test_crops_convolved_a_few_copies_at_a_time(monkeypatch, crop_elements):
    """Many copies with boxes of one size, their crops convolved in chunks of one, a few, and
    all but the last (the chunk size comes from ``CROP_ELEMENTS``)."""
    monkeypatch.setattr(sparse, "CROP_ELEMENTS", crop_elements)
    generator = torch.Generator().manual_seed(2)
    x = torch.zeros(9, 3, 16, 16, dtype=torch.float64)
    for copy in range(9):  # 3x4 boxes at different places
        r, c = 1 + copy, 11 - copy
        x[copy, :, r : r + 3, c : c + 4] = torch.randn(3, 3, 4, generator=generator).double()
    for kernel, padding in ((3, 1), (1, 0)):
        weight = torch.randn(2, 3, kernel, kernel, generator=generator, dtype=torch.float64)
        call = ConvCall(x, weight, (1, 1), (padding, padding), (1, 1), 1)
        _assert_equals_conv2d(call, 1.0, OutputPool())


def test_a_matrix_product_into_maps_that_are_not_contiguous():
    """``pointwise_product`` writes a view whose maps are not contiguous through a copy."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 5, 4, generator=generator, dtype=torch.float64)
    weight = torch.randn(6, 3, 1, 1, generator=generator, dtype=torch.float64)
    target = torch.zeros(2, 6, 5, 7, dtype=torch.float64)
    out = target[..., 2:6]  # four of seven columns: each map's rows are apart
    pointwise_product(x, weight, out)
    torch.testing.assert_close(out, F.conv2d(x, weight), rtol=1e-12, atol=1e-12)
    assert not bool(target[..., :2].any()) and not bool(target[..., 6:].any())


class _OneElementArguments(nn.Module):
    """``F.conv2d`` called with one-element tuples (stride 2, padding 2), which ``conv2d``
    reads as the same value on both axes."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3, 3, 3))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(F.conv2d(x, self.weight, None, (2,), (2,), (1,)))
        return self.head(y.mean(dim=(2, 3)))


@pytest.mark.parametrize("mode", MODES)
def test_conv2d_with_one_element_tuples_gives_the_spec_results(mode):
    torch.manual_seed(0)
    model = _OneElementArguments().eval().double()
    x = torch.rand(1, 3, 12, 12, dtype=torch.float64)
    everywhere = replace(DEFAULT, sparse_dense_above=1.0, gradient_shortcut=False)
    assert_same_as_spec(model, x, grid(12, 3), 1, mode, everywhere)
