"""Images with an exactly zero region (a letterbox, a black border) through the sparse pass.

Where the input is zero, every feature's copy is zero, so a biased layer's units there are zero
in every sharing copy: ``"proportional"`` splits their bias equally among the present copies,
which makes every feature's copy nonzero outside its feature, and the gate copy (and
``"reference"``'s full copy) is nonzero there too after the first bias. The sparse pass must
widen the boxes it carries over those units. Held to two independent references: the dense
spec pass, and completeness of ``"proportional"`` (the scores of a partition add up to the
target logit, with the default zero baseline).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.ctc.speedups import DEFAULT, SPEC

MODES = ["reference", "proportional", "none"]

#: The default speed-ups, every convolution computed sparse however large its boxes.
SPARSE_EVERYWHERE = replace(DEFAULT, sparse_dense_above=1.0, gradient_shortcut=False)


def _model(batch_norm: bool) -> nn.Module:
    """Three 3x3 convolutions with ReLUs: biased ones, or bias-free ones each followed by an
    eval-mode BatchNorm (torchvision's form, whose shift is the bias), then a linear head."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for channels in (3, 6, 6):
        layers.append(nn.Conv2d(channels, 6, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(6))
        layers.append(nn.ReLU())
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
    with torch.no_grad():  # biases and shifts large enough to matter against the signal
        for module in model:
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
            if getattr(module, "bias", None) is not None:
                module.bias.uniform_(-0.5, 0.5)
    return model.eval().double()


def _letterboxed() -> tuple[torch.Tensor, torch.Tensor]:
    """A 24 x 24 image, zero outside rows and columns 8..15, and a 4 x 4 grid of features."""
    x = torch.zeros(1, 3, 24, 24, dtype=torch.float64)
    x[..., 8:16, 8:16] = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    index = torch.arange(24) // 6
    mask = (index.view(-1, 1) * 4 + index.view(1, -1)).view(1, 1, 24, 24)
    return x, mask


def _scores(model, x, mask, mode, speedups):
    ctc = CTC(model, bias_sharing=mode)
    ctc._speedups = speedups
    return ctc.attribute(x, target=2, feature_mask=mask, return_feature_scores=True)


@pytest.mark.parametrize("speedups", [DEFAULT, SPARSE_EVERYWHERE], ids=["default", "sparse"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch_norm", [False, True], ids=["biased", "batch norm"])
def test_a_zero_border_gives_the_dense_results(mode, speedups, batch_norm):
    model = _model(batch_norm)
    x, mask = _letterboxed()
    expected, expected_scores = _scores(model, x, mask, mode, SPEC)
    actual, actual_scores = _scores(model, x, mask, mode, speedups)
    scale = float(expected_scores.scores.abs().max())
    torch.testing.assert_close(
        actual_scores.scores, expected_scores.scores, rtol=0, atol=1e-9 * scale
    )
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-9 * scale)


@pytest.mark.parametrize("speedups", [SPEC, DEFAULT, SPARSE_EVERYWHERE])
@pytest.mark.parametrize("batch_norm", [False, True], ids=["biased", "batch norm"])
def test_proportional_scores_of_a_letterboxed_image_add_up_to_the_logit(speedups, batch_norm):
    model = _model(batch_norm)
    x, mask = _letterboxed()
    _, scores = _scores(model, x, mask, "proportional", speedups)
    logit = model(x)[0, 2]
    assert scores.baseline is None  # zero baseline: no share of its own
    # the features over the zero border carry nothing but equal shares of biases: nonzero
    assert float(scores.scores[0, 0].abs()) > 1e-6
    torch.testing.assert_close(scores.scores.sum(), logit, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("batch_norm", [False, True], ids=["biased", "batch norm"])
def test_none_scores_of_a_letterboxed_image_are_gradient_times_input(batch_norm):
    model = _model(batch_norm)
    x, mask = _letterboxed()
    _, scores = _scores(model, x, mask, "none", SPARSE_EVERYWHERE)
    leaf = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(leaf)[0, 2], leaf)
    contribution = (gradient * x).sum(dim=1)[0]  # (H, W)
    expected = torch.stack([contribution[mask[0, 0] == k].sum() for k in range(16)])
    torch.testing.assert_close(scores.scores[0], expected, rtol=1e-10, atol=1e-12)
