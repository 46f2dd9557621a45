"""A map that several branches read, each through a ReLU of its own, is one stage before the ReLUs.

NASNet's and PNASNet's cells (timm's ``nasnetalarge``, ``pnasnet5large``) apply a ReLU of their
own to a convolution's map in each branch that reads it (``ActConvBn``, ``BranchSeparables``),
and a max pooling reads it too. The first ReLU joined the convolution's stage; when the next
branch read the map before it, Integrative CAM refused the model ("cannot split a stage once it
has followed it"). The ReLU now leaves the stage, whose map is the one every branch reads,
whichever reader comes first, and the fused map is that of these maps chosen as layers.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctc_plugin import IntegrativeCAM
from ctc_plugin.testing import randomise_statistics_and_biases


class _Cell(nn.Module):
    """A stem (conv, BatchNorm) read by two branches with their own ReLUs and a max pooling."""

    def __init__(self, pool_first: bool, functional: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.pool_first, self.functional = pool_first, functional
        self.conv, self.norm = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.act_a, self.act_b = nn.ReLU(), nn.ReLU()
        self.branch_a, self.branch_b = nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 6, 1)
        self.act_c = nn.ReLU()
        self.head = nn.Linear(6, 3)

    def _relu(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) if self.functional else module(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.conv(x))
        if self.pool_first:
            pooled = F.max_pool2d(h, 3, stride=1, padding=1)
        a = self.branch_a(self._relu(self.act_a, h))
        b = self.branch_b(self._relu(self.act_b, h))
        if not self.pool_first:
            pooled = F.max_pool2d(h, 3, stride=1, padding=1)
        return self.head(self.act_c(a + b + pooled).mean((2, 3)))


def _model(pool_first: bool = False, functional: bool = False) -> nn.Module:
    model = _Cell(pool_first, functional)
    randomise_statistics_and_biases(model, seed=1)
    return model.eval().double()


def _x() -> torch.Tensor:
    return torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(2)).double()


@pytest.mark.parametrize("functional", [False, True], ids=["modules", "F.relu"])
def test_the_stem_stage_ends_before_the_relus_of_the_branches(functional):
    _, layers = IntegrativeCAM(_model(functional=functional)).attribute(
        _x(), 1, return_layer_maps=True
    )
    assert layers.steps == [("conv", "bn"), ("conv",), ("conv",)]


def test_the_order_of_the_readers_does_not_change_the_maps():
    """With the max pooling first, the stem's chain ended at its BatchNorm before too."""
    after = IntegrativeCAM(_model(pool_first=False)).attribute(_x(), 1)
    before = IntegrativeCAM(_model(pool_first=True)).attribute(_x(), 1)
    torch.testing.assert_close(after, before, rtol=1e-12, atol=1e-12)


def test_the_fused_map_is_that_of_the_shared_map_chosen_as_a_layer():
    model = _model()
    found = IntegrativeCAM(model).attribute(_x(), 1)
    chosen = IntegrativeCAM(model, layers=[model.norm, model.branch_a, model.branch_b])
    torch.testing.assert_close(found, chosen.attribute(_x(), 1), rtol=1e-12, atol=1e-12)
