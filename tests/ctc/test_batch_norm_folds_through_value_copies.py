"""A BatchNorm folds into the biased layer before it across operations that keep the values.

``clone``, ``contiguous`` and ``.float()`` of float32 between a convolution and its BatchNorm
ended the fold: the BatchNorm's shift was shared as a bias of its own, and the scores moved
(by half the largest in ``"reference"`` mode) with a line that changes nothing.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.testing import random_partition

BETWEEN = {
    "clone": lambda h: h.clone(),
    "contiguous": lambda h: h.contiguous(),  # the same object
    "float": lambda h: h.float(),  # the same object
    "to": lambda h: h.to(torch.float32),
    "clone then contiguous": lambda h: h.clone().contiguous(),
    "view_as itself": lambda h: h.view_as(h),
    "reshape to its shape": lambda h: h.reshape(h.shape),
    "flatten none": lambda h: h.flatten(-1),
}


class ConvBatchNorm(nn.Module):
    def __init__(self, between=lambda h: h) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.norm = nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 3)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
            self.norm.running_mean.normal_(generator=generator)
            self.norm.running_var.uniform_(0.5, 2.0, generator=generator)
        self.between = between

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm(self.between(self.conv(x))))
        return self.head(h.mean((2, 3)))


@pytest.mark.parametrize("mode", ["proportional", "reference"])
@pytest.mark.parametrize("between", sorted(BETWEEN))
def test_scores_equal_those_without_the_operation(mode, between):
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    mask = random_partition(12, 12, 5)
    _, plain = CTC(ConvBatchNorm().eval(), bias_sharing=mode).attribute(
        x, 1, feature_mask=mask, return_feature_scores=True
    )
    _, copied = CTC(ConvBatchNorm(BETWEEN[between]).eval(), bias_sharing=mode).attribute(
        x, 1, feature_mask=mask, return_feature_scores=True
    )
    torch.testing.assert_close(copied.scores, plain.scores, rtol=0, atol=1e-6)


def test_arithmetic_between_them_makes_the_batch_norm_a_layer_of_its_own():
    """The documented boundary: ``h * 1.0`` is a product, after which the shift is a bias."""
    x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    mask = random_partition(12, 12, 5)
    _, plain = CTC(ConvBatchNorm().eval(), bias_sharing="reference").attribute(
        x, 1, feature_mask=mask, return_feature_scores=True
    )
    _, scaled = CTC(ConvBatchNorm(lambda h: h * 1.0).eval(), bias_sharing="reference").attribute(
        x, 1, feature_mask=mask, return_feature_scores=True
    )
    assert not torch.allclose(scaled.scores, plain.scores, atol=1e-3)
