"""The shifted copy of input invariance with per-channel shifts, grouped and unevenly padded
first convolutions; and the relative L1 change it reports, by hand.

``shifted_model(model, shift, x)(x + shift) == model(x)`` exactly: a per-channel normalisation
turns the input shift into a different constant per channel, which a grouped convolution's
output channel reads only from its group, and which the padding of each side must carry.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin.evaluation.invariance import input_invariance, shifted_model


class Normalised(nn.Module):
    """``(x - mean) / std`` per channel (a different shift per channel), then ``conv``."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        channels = conv.in_channels
        self.register_buffer("mean", torch.linspace(0.3, 0.6, channels).view(1, -1, 1, 1))
        self.register_buffer("std", torch.linspace(0.2, 0.5, channels).view(1, -1, 1, 1))
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv((x - self.mean) / self.std)).flatten(1)


@pytest.mark.parametrize(
    ("groups", "padding"),
    [(1, (1, 2)), (1, (2, 0)), (2, (1, 1)), (4, (0, 1))],
    ids=["padding 1x2", "padding 2x0", "2 groups", "4 groups, padding 0x1"],
)
def test_the_shifted_copy_is_exact(groups, padding):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, padding=padding, groups=groups).double()
    model = Normalised(conv).double()
    x = torch.rand(2, 4, 6, 7, dtype=torch.float64)
    copy = shifted_model(model, -0.7, x)
    torch.testing.assert_close(copy(x - 0.7), model(x), rtol=1e-10, atol=1e-10)


def test_differences_are_the_relative_l1_change_of_the_maps():
    """A method that returns its input summed over channels: the maps differ by
    ``channels * shift`` everywhere, relative to the original map's L1 norm."""
    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.Flatten(), nn.LazyLinear(2)).double()
    x = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model(x)

    def channel_sum(model, images, targets, feature_mask):
        return images.sum(1, keepdim=True)

    result = input_invariance(channel_sum, model, x, target=0, shift=-0.5)
    expected = (3 * 0.5 * 25) / x.sum(1).abs().flatten(1).sum(1)
    torch.testing.assert_close(result.differences, expected, rtol=1e-12, atol=0)
    assert result.model_gap < 1e-10
