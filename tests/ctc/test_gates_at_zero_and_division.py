"""Gates at exact zeros, and a signal divided by a gate tensor, against hand-worked numbers.

The rules table: a ReLU gate is the gate copy's ``1[x > 0]`` (closed at ``x = 0``); a rescale
gate is ``y / x`` of the gate copy, 0 where ``x = 0``; ``signal / gate`` divides every copy by
the gate copy's value. The two features below cancel exactly in the gate copy, so its
pre-activation is exactly 0 while each feature's copy is not.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.ctc.speedups import DEFAULT, SPEC

SPEEDUPS = {"spec": SPEC, "default": DEFAULT}


class _Cancelling(nn.Module):
    """``head(act(x_0 + x_1))``: the sum is exactly 0 for ``x = (1, -1)``."""

    def __init__(self, activation: nn.Module) -> None:
        super().__init__()
        self.sum = nn.Linear(2, 1, bias=False)
        self.activation = activation
        self.head = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            self.sum.weight.fill_(1.0)
            self.head.weight.fill_(3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.activation(self.sum(x)))


def _feature_scores(model, x, mask, mode, speedups, baselines=None):
    ctc = CTC(model, bias_sharing=mode)
    ctc._speedups = speedups
    _, scores = ctc.attribute(
        x, target=0, feature_mask=mask, baselines=baselines, return_feature_scores=True
    )
    return scores.scores[0]


@pytest.mark.parametrize("speedups", SPEEDUPS.values(), ids=SPEEDUPS.keys())
@pytest.mark.parametrize("mode", ["none", "proportional", "reference"])
@pytest.mark.parametrize(
    "activation", [nn.ReLU(), nn.SiLU(), nn.GELU()], ids=["relu", "silu", "gelu"]
)
def test_a_gate_at_an_exact_zero_passes_nothing(activation, mode, speedups):
    """ReLU's gate is closed at 0, a rescale gate is 0 there: both features score 0 (the
    autograd derivative of ReLU at 0 is 0 too, so this is also gradient x input)."""
    model = _Cancelling(activation).double().eval()
    x = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    mask = torch.tensor([[0, 1]])
    scores = _feature_scores(model, x, mask, mode, speedups)
    torch.testing.assert_close(scores, torch.zeros(2, dtype=torch.float64))


class _DividedByGate(nn.Module):
    """``head(h / sigmoid(g x))`` with ``h = W x``: a signal divided by a gate tensor."""

    def __init__(self, in_place: bool) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.signal = nn.Linear(4, 3)
        self.gate = nn.Linear(4, 3)
        self.head = nn.Linear(3, 2)
        self.in_place = in_place

    def forward(self, x: torch.Tensor, detach_gate: bool = False) -> torch.Tensor:
        h = self.signal(x)
        s = torch.sigmoid(self.gate(x))
        if detach_gate:
            s = s.detach()
        if self.in_place:
            h /= s
        else:
            h = h / s
        return self.head(h)


@pytest.mark.parametrize("speedups", SPEEDUPS.values(), ids=SPEEDUPS.keys())
@pytest.mark.parametrize("in_place", [False, True], ids=["divide", "divide in place"])
def test_a_signal_divided_by_a_gate_tensor_is_the_linearised_networks_gradient_times_input(
    in_place, speedups
):
    """``"none"``: the network with its gate detached is affine in ``x``, and a feature's
    score is that network's gradient x input summed over the feature."""
    model = _DividedByGate(in_place).double().eval()
    x = torch.tensor([[0.5, -1.2, 2.0, 0.3]], dtype=torch.float64)
    mask = torch.tensor([[0, 0, 1, 2]])
    leaf = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(leaf, detach_gate=True)[0, 0], leaf)
    contribution = (gradient * x)[0]
    expected = torch.stack([contribution[mask[0] == k].sum() for k in range(3)])
    scores = _feature_scores(model, x, mask, "none", speedups)
    torch.testing.assert_close(scores, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("speedups", SPEEDUPS.values(), ids=SPEEDUPS.keys())
@pytest.mark.parametrize("in_place", [False, True], ids=["divide", "divide in place"])
def test_proportional_scores_through_a_division_by_a_gate_add_up_to_the_logit(in_place, speedups):
    model = _DividedByGate(in_place).double().eval()
    x = torch.tensor([[0.5, -1.2, 2.0, 0.3]], dtype=torch.float64)
    mask = torch.tensor([[0, 0, 1, 2]])
    scores = _feature_scores(model, x, mask, "proportional", speedups)
    torch.testing.assert_close(scores.sum(), model(x)[0, 0], rtol=1e-12, atol=1e-12)
