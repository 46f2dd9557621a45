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


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_segments": 2.5}, "n_segments must be an integer of at least 1"),
        ({"n_segments": True}, "n_segments must be an integer of at least 1"),
        ({"n_segments": "10"}, "n_segments must be an integer of at least 1"),
        ({"min_area": "0.1"}, "min_area must be non-negative"),
        ({"mean": (0.5, 0.5), "std": (1, 1)}, "mean must be three finite numbers"),
        ({"mean": (0, 0, float("nan")), "std": (1, 1, 1)}, "mean must be three finite numbers"),
        ({"mean": (0, 0, 0), "std": 0.5}, "std must be three finite numbers"),
        ({"value_range": "AUTO"}, r"value_range must be \(low, high\), .* or 'auto'; got 'AUTO'"),
        ({"value_range": (0, float("inf"))}, r"value_range must be \(low, high\)"),
    ],
)
def test_superpixel_options_of_the_wrong_kind_are_refused_when_built(options, message):
    with pytest.raises(ValueError, match=message):
        SuperpixelSegmenter(**options)


def test_an_option_scikit_image_does_not_take_is_refused_when_built():
    with pytest.raises(TypeError, match=r"unknown option bogus for method='slic'.*compactness"):
        SuperpixelSegmenter(bogus=3)
    with pytest.raises(TypeError, match="unknown options a, b for method='watershed'"):
        SuperpixelSegmenter(method="watershed", a=1, b=2)
    # the normalisation as tensors and arrays, and scikit-image's own options, are fine
    segmenter = SuperpixelSegmenter(
        mean=torch.tensor([0.5, 0.5, 0.5]), std=np.array([0.2, 0.2, 0.2]), compactness=10.0
    )
    assert segmenter(torch.zeros(1, 3, 16, 16)).shape == (1, 1, 16, 16)
