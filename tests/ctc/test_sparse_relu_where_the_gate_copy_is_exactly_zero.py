"""A ReLU closes its gate where the gate copy is exactly zero, in the sparse pass too.

A horizontal difference kernel on an image that is constant on its left half gives a gate copy of
exactly 0 there, while the feature copies on either side of a feature border are ``+v`` and
``-v`` (they cancel in the gate copy). The spec's ReLU passes only where the gate copy is
positive, so those copies stop there; the sparse pass's ReLU (on each copy's rows) must agree.
Scores are held to the spec in float64 in every mode.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from ctc_plugin.ctc.speedups import DEFAULT

from .test_sparse import grid
from .test_speedups import MODES, assert_same_as_spec

#: The default speed-ups, every convolution sparse; ``"none"`` through the pass of copies.
EVERYWHERE = replace(DEFAULT, sparse_dense_above=1.0, gradient_shortcut=False)


class _DifferenceThenReLU(nn.Module):
    """Differences of horizontal neighbours (both signs), a ReLU, a 3x3 convolution, a head."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.difference = nn.Conv2d(1, 2, (1, 2), bias=False)
        with torch.no_grad():
            self.difference.weight.copy_(torch.tensor([[[[1.0, -1.0]]], [[[-1.0, 1.0]]]]))
        self.relu = nn.ReLU(inplace=inplace)
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.conv(self.relu(self.difference(x)))).mean(dim=(2, 3)))


def _half_constant_image() -> torch.Tensor:
    """A 1-channel 12x12 image: 0.5 on the left half, random on the right half."""
    x = torch.full((1, 1, 12, 12), 0.5, dtype=torch.float64)
    x[..., 6:] = torch.rand(1, 1, 12, 6, generator=torch.Generator().manual_seed(0)).double()
    return x


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_copies_stop_where_the_gate_copy_is_exactly_zero(mode, inplace):
    torch.manual_seed(0)
    model = _DifferenceThenReLU(inplace).eval().double()
    x = _half_constant_image()
    for speedups in (DEFAULT, EVERYWHERE):
        assert_same_as_spec(model, x, grid(12, 4), 1, mode, speedups)


def test_the_image_has_copies_that_cancel_in_a_zero_gate_copy():
    """The case is what it claims: the gate copy is exactly 0 where some feature copies of the
    first layer are not (so a gate of ``>= 0`` would let them through)."""
    model = _DifferenceThenReLU(False).eval().double()
    x = _half_constant_image()
    mask = grid(12, 4)
    copies = torch.cat([x * (mask == k) for k in range(16)])  # (16, 1, 12, 11) after the kernel
    with torch.no_grad():
        gate, features = model.difference(x), model.difference(copies)
    cancelled = (gate == 0) & (features != 0).any(dim=0, keepdim=True)
    assert int(cancelled.sum()) > 0
