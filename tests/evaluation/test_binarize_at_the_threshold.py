"""``binarize`` keeps the pixels *at* its threshold (its docstring: ``>=`` the threshold times
the maximum; at or above the quantile)."""

from __future__ import annotations

import torch

from ctc_plugin.evaluation.localisation import binarize


def test_relative_keeps_values_equal_to_the_threshold_times_the_maximum():
    maps = torch.tensor([[[4.0, 2.0], [1.0, 0.0]]])
    torch.testing.assert_close(
        binarize(maps, 0.5, "relative"), torch.tensor([[[True, True], [False, False]]])
    )
    # threshold 1: the maximum itself is kept
    torch.testing.assert_close(
        binarize(maps, 1.0, "relative"), torch.tensor([[[True, False], [False, False]]])
    )


def test_quantile_keeps_values_at_the_quantile():
    maps = torch.arange(5.0).view(1, 1, 5)  # the median is 2, a value of the map
    torch.testing.assert_close(
        binarize(maps, 0.5, "quantile"), torch.tensor([[[False, False, True, True, True]]])
    )
    # quantile 1 is the maximum: it is kept
    torch.testing.assert_close(
        binarize(maps, 1.0, "quantile"), torch.tensor([[[False, False, False, False, True]]])
    )
