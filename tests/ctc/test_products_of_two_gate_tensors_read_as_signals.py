"""A product of two gate tensors that carry copies, read as a signal, is a product of signals.

``relu6(conv(x)) * sigmoid(fc(pool(...)))`` (squeeze-excitation after a bounded activation) was
refused at the model's output: the product of two gate tensors was the full pass's value only,
a gate-only tensor. It still serves as a gate where it multiplies the signal; read as a signal
its copies are those of a product of two signals (half to each factor).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.ctc.speedups import SPEC

ACTIVATIONS = {
    "relu6": nn.ReLU6(),
    "hardtanh": nn.Hardtanh(0.0, 2.0),
    "clamp": lambda t: t.clamp(0.0, 6.0),
    "tanh": nn.Tanh(),
    "sigmoid": nn.Sigmoid(),
}


class SqueezeExcitationAfter(nn.Module):
    def __init__(self, activation) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.activation = nn.Conv2d(3, 8, 3, padding=1), activation
        self.fc = nn.Conv2d(8, 8, 1)
        self.conv2, self.head = nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.conv(x))
        x = x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))
        return self.head(torch.relu(self.conv2(x)).mean((2, 3)))


def _mask() -> torch.Tensor:
    return (torch.arange(12) // 4).view(1, 1, 1, 12).expand(1, 1, 12, 12) + 3 * (
        torch.arange(12) // 6
    ).view(1, 1, 12, 1)


@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_squeeze_excitation_after_a_bounded_activation_is_explained(activation, mode):
    model = SqueezeExcitationAfter(ACTIVATIONS[activation]).double().eval()
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _, scores = CTC(model, bias_sharing=mode).attribute(
        x, 1, feature_mask=_mask(), return_feature_scores=True
    )
    spec = CTC(model, bias_sharing=mode)
    spec._speedups = SPEC
    _, expected = spec.attribute(x, 1, feature_mask=_mask(), return_feature_scores=True)
    torch.testing.assert_close(scores.scores, expected.scores, rtol=1e-10, atol=1e-12)
    if mode == "proportional":
        torch.testing.assert_close(scores.scores.sum(1), model(x)[:, 1], rtol=1e-10, atol=1e-12)


class GatedByTwoGates(nn.Module):
    """``h * (sigmoid(a) * sigmoid(b))``: the product of two gate tensors serves as a gate."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.a, self.b = (nn.Conv2d(3, 4, 3, padding=1) for _ in range(3))
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, detach_gate: bool = False) -> torch.Tensor:
        gate = torch.sigmoid(self.a(x)) * torch.sigmoid(self.b(x))
        if detach_gate:
            gate = gate.detach()
        return self.head((torch.relu(self.conv(x)) * gate).mean((2, 3)))


def test_a_product_of_two_gates_multiplying_the_signal_is_still_the_full_pass_gate():
    """``"none"`` is gradient times input with the gates held: the product enters whole."""
    model = GatedByTwoGates().double().eval()
    x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mask = _mask()
    _, scores = CTC(model, bias_sharing="none").attribute(
        x, 1, feature_mask=mask, return_feature_scores=True
    )
    leaf = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(leaf, detach_gate=True)[0, 1], leaf)
    by_pixel = (gradient * x).sum(1)[0]
    expected = torch.stack([by_pixel[mask[0, 0] == k].sum() for k in range(6)])
    torch.testing.assert_close(scores.scores[0], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
def test_the_zennit_attributor_equals_the_captum_class(mode):
    from ctc_plugin import CTCAttributor, CTCComposite

    model = SqueezeExcitationAfter(nn.ReLU6()).double().eval()
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    captum = CTC(model, bias_sharing=mode).attribute(x, 1, feature_mask=_mask())
    attributor = CTCAttributor(model, CTCComposite(bias_sharing=mode), feature_mask=_mask())
    _, zennit = attributor(x, torch.eye(3, dtype=torch.float64)[[1, 1]])
    torch.testing.assert_close(zennit, captum, rtol=1e-10, atol=1e-15)
