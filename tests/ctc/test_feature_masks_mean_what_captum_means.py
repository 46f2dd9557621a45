"""The same feature_mask tensor names the same features in CTC as in Captum, in every form.

On a linear model with no bias, a feature's occlusion (FeatureAblation, baseline 0) and its
Shapley value are both the sum of ``w * x`` over the feature's elements, and so is its CTC score
in ``"none"`` sharing: the three maps must agree element for element. That holds only where
both read every form of mask alike: shared ``(H, W)`` and ``(1, 1, H, W)`` masks, per-example
``(N, 1, H, W)`` masks whose examples hold different ids, per-channel ``(1, C, H, W)`` and
``(N, C, H, W)`` masks, ids that are neither contiguous nor from 0, and integer dtypes other
than int64. With a bias, ``"proportional"`` sharing adds ``b * |z_k| / sum_j |z_j|`` to each of
those sums (``z_k`` the feature's sum): checked per feature against ``FeatureScores.ids``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from captum.attr import FeatureAblation, ShapleyValueSampling
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.ctc.speedups import DEFAULT

# Captum's note that non-contiguous ids cost it ablations that change nothing
pytestmark = pytest.mark.filterwarnings("ignore:Feature mask is missing some integers")

N, C, H, W = 3, 3, 6, 6


def _masks() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    per_example = torch.randint(0, 3, (N, 1, H, W), generator=g)
    per_example[1][per_example[1] == 2] = 0  # example 1 lacks a feature
    per_example[2] += 10  # example 2's ids are none of the others'
    return {
        "(H, W) non-contiguous": torch.randint(0, 4, (H, W), generator=g) * 7 + 3,
        "(1, 1, H, W) uint8": torch.randint(0, 4, (1, 1, H, W), generator=g).to(torch.uint8),
        "(N, 1, H, W) per example": per_example,
        "(1, C, H, W) int32": torch.randint(0, 5, (1, C, H, W), generator=g).int(),
        "(N, C, H, W)": torch.randint(0, 5, (N, C, H, W), generator=g) * 2,
    }


def _linear(bias: bool) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(C * H * W, 4, bias=bias)).double().eval()


def _images() -> torch.Tensor:
    return torch.rand(N, C, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("form", list(_masks()))
def test_ctc_none_occlusion_and_shapley_agree_on_a_linear_model(form):
    model, x, mask = _linear(bias=False), _images(), _masks()[form]
    occlusion = FeatureAblation(model).attribute(x, target=1, feature_mask=mask)
    shapley = ShapleyValueSampling(model).attribute(x, target=1, feature_mask=mask, n_samples=2)
    for speedups in (DEFAULT, dataclasses.replace(DEFAULT, gradient_shortcut=False)):
        ctc = CTC(model, bias_sharing="none")
        ctc._speedups = speedups
        torch.testing.assert_close(ctc.attribute(x, 1, feature_mask=mask), occlusion)
    torch.testing.assert_close(shapley.double(), occlusion)  # Captum returns float32 here


@pytest.mark.parametrize("form", list(_masks()))
@pytest.mark.parametrize("copies_per_pass", [None, 4])  # 4: the examples in groups
def test_proportional_scores_land_on_their_ids(form, copies_per_pass):
    model, x, mask = _linear(bias=True), _images(), _masks()[form]
    weight = model[1].weight[1].detach().view(C, H, W)
    bias = float(model[1].bias[1].detach())
    ctc = CTC(model, bias_sharing="proportional")
    ctc._speedups = dataclasses.replace(DEFAULT, copies_per_pass=copies_per_pass)
    maps, scores = ctc.attribute(x, 1, feature_mask=mask, return_feature_scores=True)
    full = mask.long().expand(x.shape)
    assert scores.ids.tolist() == torch.unique(full).tolist()
    parts = torch.stack([((x * weight) * (full == i)).flatten(1).sum(1) for i in scores.ids], 1)
    present = torch.stack([(full == i).flatten(1).any(1) for i in scores.ids], 1)
    expected = parts + bias * parts.abs() / parts.abs().sum(1, keepdim=True)
    assert torch.equal(scores.present, present)
    torch.testing.assert_close(scores.scores, expected.masked_fill(~present, 0.0))
    for k, feature in enumerate(scores.ids):
        for example in range(N):
            inside = maps[example][full[example] == feature]
            assert torch.all(inside == scores.scores[example, k])
