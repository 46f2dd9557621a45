"""Float16 models: the shares stay in float16's range, and scores that leave it are refused.

``"proportional"`` shares are ``b * |z_k| / sum_j |z_j|``; their fused form multiplies
``|z_k|`` by ``b / sum_j |z_j|``, which exceeds float16's range where the copies' values are
small, and gave NaN scores of a finite output. It is computed in float32 for float16 copies.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.ctc.pass_output import check_finite_scores
from ctc_plugin.ctc.speedups import SPEC
from ctc_plugin.testing import random_partition


def _small_values_big_bias() -> nn.Module:
    net = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Flatten(), nn.Linear(16, 2)).eval()
    with torch.no_grad():
        net[0].weight.fill_(1e-3)  # the copies' z: 1e-5, their sum far below 1 / 65504
        net[0].bias.fill_(1.0)
    return net.half()


@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
def test_float16_scores_equal_the_specs_where_the_quotient_leaves_the_range(mode):
    net = _small_values_big_bias()
    x = torch.full((1, 1, 4, 4), 1e-2, dtype=torch.float16)
    mask = random_partition(4, 4, 4)
    _, fast = CTC(net, bias_sharing=mode).attribute(
        x, 0, feature_mask=mask, return_feature_scores=True
    )
    spec = CTC(net, bias_sharing=mode)
    spec._speedups = SPEC
    _, expected = spec.attribute(x, 0, feature_mask=mask, return_feature_scores=True)
    assert torch.isfinite(fast.scores).all()
    torch.testing.assert_close(fast.scores, expected.scores, rtol=0, atol=2e-3)
    if mode == "proportional":
        torch.testing.assert_close(
            fast.scores.float().sum(1), fast.output.float(), rtol=0, atol=2e-3
        )


def test_scores_out_of_range_of_a_finite_output_are_refused():
    scores = torch.tensor([[1.0, float("nan")], [1.0, 2.0]])
    output = torch.tensor([3.0, 3.0])
    with pytest.raises(FloatingPointError, match=r"examples \[0\] are NaN or infinite"):
        check_finite_scores(scores, output)
    check_finite_scores(scores[1:], output[1:])


def test_an_output_that_is_not_finite_is_refused_as_integrative_cam_refuses_it():
    """CTC returned NaN scores of a NaN output without a word; Integrative CAM refused it."""
    from ctc_plugin import CTC
    from ctc_plugin.cam import IntegrativeCAM

    scores = torch.tensor([[1.0, 2.0], [float("inf"), 0.0]])
    output = torch.tensor([3.0, float("inf")])  # the model's own overflow
    with pytest.raises(ValueError, match=r"target outputs of examples \[1\] are \[inf\]"):
        check_finite_scores(scores, output)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(4, 2),
    ).eval()  # fmt: skip
    with torch.no_grad():
        model[-1].bias[1] = float("nan")
    images, mask = torch.rand(2, 3, 8, 8), torch.arange(4).repeat_interleave(16).reshape(8, 8)
    calls = [
        lambda: CTC(model).attribute(images, 1, feature_mask=mask[None, None]),
        lambda: IntegrativeCAM(model).attribute(images, 1),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"target outputs of examples \[0, 1\]"):
            call()


@pytest.mark.parametrize("speedups", ["default", "spec"])
def test_float16_magnitudes_that_sum_past_the_range_still_share_the_bias(speedups):
    """Copies of +-40000 (the signal cancels): sum |z| = 80000 > 65504, the shares are 0.5."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    mask[..., 2:] = 1
    with torch.no_grad():
        weight = torch.where(mask.flatten() == 0, 5e3, -5e3)
        net[1].weight.copy_(torch.stack([weight, weight]))
        net[1].bias.fill_(1024.0)
    net = net.half()
    ctc = CTC(net)
    if speedups == "spec":
        ctc._speedups = SPEC
    x = torch.ones(1, 1, 4, 4, dtype=torch.float16)
    _, scores, delta = ctc.attribute(
        x, 0, feature_mask=mask, return_feature_scores=True, return_convergence_delta=True
    )
    assert scores.scores.tolist() == [[40512.0, -39488.0]]  # 40000 + 512, -40000 + 512
    assert delta.tolist() == [0.0]


@pytest.mark.parametrize("speedups", ["default", "spec"])
def test_float16_reference_shares_of_values_past_six_and_a_half(speedups):
    """``ceil(10 z_k) * 1000`` left float16's range from ``z_k > 6.55`` on: NaN shares.

    A finite float16 pass of ordinary values (a trained ResNet's) was refused with a
    ``FloatingPointError``. The formula computes float16 copies in float32; the scores equal
    the float32 model's, whose values here are exact in float16.
    """
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 2)
    ).eval()  # fmt: skip
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([8.0, 12.0, 20.0]).view(3, 1, 1, 1))
        net[0].bias.fill_(0.5)
        net[3].weight.copy_(torch.randint(-4, 5, (2, 48)) / 4)
    x = torch.randint(1, 5, (1, 1, 4, 4)) / 2.0  # z = 4 .. 40
    mask = random_partition(4, 4, 4)
    scores = {}
    for dtype in (torch.float32, torch.float16):
        ctc = CTC(net.to(dtype), bias_sharing="reference")
        if speedups == "spec":
            ctc._speedups = SPEC
        _, scores[dtype] = ctc.attribute(
            x.to(dtype), 0, feature_mask=mask, return_feature_scores=True
        )
    assert torch.isfinite(scores[torch.float16].scores).all()
    torch.testing.assert_close(
        scores[torch.float16].scores.float(), scores[torch.float32].scores, rtol=2e-3, atol=1e-2
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_reference_formula_of_a_16_bit_value_is_exact_in_its_ratio(dtype):
    """``ceil(10 * 7) * 1000 = 70000`` is past float16's range (NaN shares) and not exact in
    bfloat16 (the full copy's own share came out 1.0078): both are computed in float32."""
    from ctc_plugin.ctc.sharing import reference_shares

    z_full = torch.tensor([7.0], dtype=dtype).view(1, 1, 1)
    z_copies = torch.tensor([7.0, 3.5], dtype=dtype).view(1, 2, 1)
    sigma = torch.tensor(10.0, dtype=torch.float64)
    shares = reference_shares(z_copies, z_full, sigma, (2,))
    assert shares.dtype == dtype
    assert shares.flatten().tolist() == [1.0, 0.5]
