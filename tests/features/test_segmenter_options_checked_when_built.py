"""Segmenter options: NumPy integers work, bad values are refused when the segmenter is built."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctc_plugin.features import GridSegmenter, SuperpixelSegmenter


@pytest.mark.parametrize("cells", [np.int64(3), (np.int64(3), np.int32(3)), (3, 3)])
def test_grid_takes_numpy_integers(cells):
    segmenter = GridSegmenter(cells)
    assert segmenter.cells == (3, 3)
    assert torch.equal(segmenter(torch.rand(1, 3, 9, 9)), GridSegmenter(3)(torch.rand(1, 3, 9, 9)))


@pytest.mark.parametrize("cells", [2.5, (1, 2, 3), (2,), "4", True, 0, (2, 0), (2, -1)])
def test_grid_refuses_what_is_not_a_cell_count_with_one_message(cells):
    with pytest.raises(ValueError, match="cells must be a positive int or a pair"):
        GridSegmenter(cells)


def test_superpixel_min_area_is_checked_when_built():
    with pytest.raises(ValueError, match="min_area must be non-negative"):
        SuperpixelSegmenter(min_area=-0.1)
