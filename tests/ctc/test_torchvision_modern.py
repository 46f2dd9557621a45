"""CTC on torchvision's modern CNNs: squeeze-excitation, LayerNorm, layer scale, stochastic depth.

Random weights, small inputs; every BatchNorm gets random running statistics and every
normalisation and bias random values, so that the biases CTC shares are not zero (torchvision
initialises them to zero).
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.ctc.attributor import CTCAttributor
from ctc_plugin.ctc.composite import CTCComposite
from ctc_plugin.testing import randomise_statistics_and_biases

BUILDERS = ["mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf", "convnext_tiny"]
#: EfficientNet-V2's fused MBConv with SE, as EfficientNet-B0's: the largest, with make test-slow
BUILDERS += [pytest.param("efficientnet_v2_s", marks=pytest.mark.slow)]
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}


def randomised(builder: str, dtype: torch.dtype) -> nn.Module:
    """A torchvision model with random weights, norm statistics, affine parameters and biases."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, builder)()
    randomise_statistics_and_biases(model, seed=1)
    return model.eval().to(dtype)


def grid(size: int, cells: int) -> torch.Tensor:
    rows = torch.arange(size) * cells // size
    return (rows.view(1, 1, -1, 1) * cells + rows.view(1, 1, 1, -1)) + 1


@pytest.mark.parametrize(
    "dtype", [torch.float64, pytest.param(torch.float32, marks=pytest.mark.slow)]
)
@pytest.mark.parametrize("builder", BUILDERS)
def test_proportional_scores_add_up_to_the_logit(builder: str, dtype: torch.dtype) -> None:
    model = randomised(builder, dtype)
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(2), dtype=dtype)
    _, scores = CTC(model, bias_sharing="proportional").attribute(
        x, 7, feature_mask=grid(48, 3), return_feature_scores=True
    )
    with torch.no_grad():
        logits = model(x)[:, 7]
    assert logits.abs().min() > 1e-3  # the check below is relative to a real logit
    relative = (scores.scores.sum(1) - logits).abs() / logits.abs()
    assert relative.max() < TOLERANCE[dtype], relative
    assert scores.scores.abs().max() < 1e3 * logits.abs().max()  # no cancelling giants


@pytest.mark.parametrize("builder", BUILDERS)
def test_every_mode_runs_and_the_attributor_agrees(builder: str) -> None:
    model = randomised(builder, torch.float64)
    x = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    mask = grid(40, 2)
    for mode in ("reference", "none"):
        _, scores = CTC(model, bias_sharing=mode).attribute(
            x, 3, feature_mask=mask, return_feature_scores=True
        )
        assert torch.isfinite(scores.scores).all() and scores.scores.abs().sum() > 0
    expected = CTC(model, bias_sharing="reference").attribute(x, 3, feature_mask=mask)
    with CTCAttributor(model, CTCComposite(bias_sharing="reference"), feature_mask=mask) as attr:
        _, relevance = attr(x, torch.eye(1000, dtype=torch.float64)[[3]])
    torch.testing.assert_close(relevance, expected, rtol=1e-9, atol=1e-12)
