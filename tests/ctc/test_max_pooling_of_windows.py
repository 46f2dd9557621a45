"""Max pooling of windows merged into the batch (SAM 2's HieraDet pools its queries so).

HieraDet partitions its channels-last map into windows, ``(N * windows, h, w, C)``, so each
copy's rows are merged with its windows, and pools the queries of a stage's first block with
``nn.MaxPool2d`` on them. CTC refused that ("its input merges the copies with another
dimension"), and with it ``sam2_hiera_tiny``; every window of a copy now takes the switches of
the gate copy's same window, as pooling the whole map does where the windows hold whole pooling
cells.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from .exactness import assert_exact_in_every_mode, assert_same_scores_in_every_mode, random_case


def _windows(x: torch.Tensor) -> torch.Tensor:
    """(N, C, 8, 8) as 4 windows of 4 x 4 per example, example-major: (N * 4, C, 4, 4)."""
    n, c = x.shape[:2]
    return x.view(n, c, 2, 4, 2, 4).permute(0, 2, 4, 1, 3, 5).reshape(n * 4, c, 4, 4)


class PooledWindows(nn.Module):
    """A convolution, max pooling (of its windows, or of its whole map), a linear head."""

    def __init__(self, windows: bool, functional: bool = False) -> None:
        super().__init__()
        self.windows, self.functional = windows, functional
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(4 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if self.windows:
            pooled = F.max_pool2d(_windows(h), 2) if self.functional else self.pool(_windows(h))
            pooled = pooled.view(-1, 2, 2, 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
        else:
            pooled = _windows(self.pool(h).repeat_interleave(2, 2).repeat_interleave(2, 3))
            pooled = pooled[..., ::2, ::2].reshape(-1, 2, 2, 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return self.head(pooled.reshape(x.shape[0], -1))


@pytest.mark.parametrize("functional", [False, True], ids=["nn.MaxPool2d", "F.max_pool2d"])
def test_pooled_windows_are_the_pooled_map(functional: bool) -> None:
    windows, x, mask = random_case(lambda: PooledWindows(True, functional))
    whole, _, _ = random_case(lambda: PooledWindows(False))
    torch.testing.assert_close(windows(x), whole(x), rtol=0, atol=0)
    assert_same_scores_in_every_mode(windows, whole, x, mask, 1, rtol=1e-10, atol=1e-12)
    assert_exact_in_every_mode(windows, x, mask, 1)
