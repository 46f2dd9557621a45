"""Integrative CAM numbers the ``batch_norm`` calls it cannot name by a module, one by one.

A ``batch_norm`` call whose running mean (or, without running statistics, whose weight) is no
BatchNorm module's is labelled ``batch_norm#k``, the k-th such call. A call without running
statistics whose weight is no module's either (NFNet's weight standardisation, a computed gain)
took two numbers, one looked up by its missing running mean and one by its weight, so the next
unnamed call was ``batch_norm#3``, the second such call.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctc_plugin import IntegrativeCAM
from ctc_plugin.inputs import TrainingModeError


class _StandardisedConv(nn.Conv2d):
    """A convolution whose weight is standardised by ``batch_norm`` with a computed gain."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gain = torch.ones(self.out_channels) * 1.0  # a computed tensor: no module's weight
        weight = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1), None, None, weight=gain,
            training=True, momentum=0.0, eps=1e-6,
        ).reshape_as(self.weight)  # fmt: skip
        return F.conv2d(x, weight, self.bias, padding=1)


class _OwnNorm(nn.Module):
    """A normalisation of its own (not a BatchNorm module) in training mode."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.mean, self.var, training=True)


def test_the_second_unnamed_batch_norm_call_is_number_two() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        _StandardisedConv(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), _OwnNorm(4),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2),
    ).eval()  # fmt: skip
    with pytest.raises(TrainingModeError, match=r"BatchNorm 'batch_norm#2' runs in training"):
        IntegrativeCAM(model).attribute(torch.rand(1, 3, 8, 8), target=0)
