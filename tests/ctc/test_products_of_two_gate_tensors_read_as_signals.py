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
    _assert_equals_the_spec_and_adds_up(SqueezeExcitationAfter(ACTIVATIONS[activation]), mode)


def _assert_equals_the_spec_and_adds_up(model: nn.Module, mode: str, before_spec=None) -> None:
    """The default speed-ups give the spec pass's scores; ``"proportional"`` adds up.

    ``before_spec`` is called between the two passes (to change how the spec pass computes).
    """
    model = model.double().eval()
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _, scores = CTC(model, bias_sharing=mode).attribute(
        x, 1, feature_mask=_mask(), return_feature_scores=True
    )
    if before_spec is not None:
        before_spec()
    spec = CTC(model, bias_sharing=mode)
    spec._speedups = SPEC
    _, expected = spec.attribute(x, 1, feature_mask=_mask(), return_feature_scores=True)
    torch.testing.assert_close(scores.scores, expected.scores, rtol=1e-10, atol=1e-12)
    if mode == "proportional":
        with torch.no_grad():
            output = model(x)[:, 1]
        torch.testing.assert_close(scores.scores.sum(1), output, rtol=1e-10, atol=1e-12)


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


def _at_once(ctx, out, first, second, name):
    """The product's copies computed at once, as a product of two signals."""
    return ctx.signal_product(first, second)


class AfterTheProduct(nn.Module):
    """``g = relu6(conv(x)) * sigmoid(se)``, then one of the ways models go on with it."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.conv2, self.conv3 = nn.Conv2d(8, 8, 1), nn.Conv2d(3, 8, 3, padding=1)
        self.spatial, self.scale = nn.Conv2d(1, 1, 3, padding=1), nn.Parameter(torch.rand(8, 1, 1))
        self.head, self.variant = nn.Linear(8, 3), variant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = nn.functional.relu6(self.conv(x))
        gate = torch.sigmoid(self.fc(a.mean((2, 3), keepdim=True)))
        g = a.mul_(gate) if self.variant == "in place" else a * gate
        h = torch.relu(self.conv3(x))
        y = {
            "in place": lambda: g,
            "times a constant": lambda: g * 0.5,
            "layer scale": lambda: self.scale * g,
            "divided by a constant": lambda: g / 2,
            "scaled in place": lambda: g.mul_(0.5),
            "a second gate (CBAM)": lambda: g * torch.sigmoid(self.spatial(g.mean(1, True))),
            "a signal times its convolution": lambda: h * self.conv2(g),
            "a signal times its sum with a signal": lambda: h * (g + self.conv3(x)),
        }[self.variant]()
        return self.head(y.mean((2, 3)))


VARIANTS = [
    "in place", "times a constant", "layer scale", "divided by a constant", "scaled in place",
    "a signal times its convolution", "a signal times its sum with a signal",
]  # fmt: skip


@pytest.mark.parametrize("mode", ["proportional", "none"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_what_follows_the_product_reads_it_as_computed_at_once(variant, mode, monkeypatch):
    """Scaling and a second gate were refused (the product ended as a gate-only tensor); a
    convolution of it or its sum with the signal was read as a gate where it met the signal."""
    from ctc_plugin.ctc import handlers

    _assert_equals_the_spec_and_adds_up(
        AfterTheProduct(variant),
        mode,
        lambda: monkeypatch.setattr(handlers, "_standing_for_signal_product", _at_once),
    )


@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
def test_a_second_gate_multiplies_the_product_as_the_signal(mode):
    """CBAM's spatial gate after its channel gate: ``g * sigmoid(conv(mean(g)))`` was refused
    (two gate-only tensors at the output). The product is the signal the second gate scales:
    its copies, each times the full pass's second gate (computed at once, the product would be
    a gate tensor itself, and the two halved as two signals)."""
    _assert_equals_the_spec_and_adds_up(AfterTheProduct("a second gate (CBAM)"), mode)


class SquashedAfterALayer(nn.Module):
    """``g = relu6(conv(x)) * tanh(se)`` read by a layer (``"linear"``, ``"conv"``) or a
    residual sum, then a squashing activation, and a linear layer reading that as a signal."""

    def __init__(self, reader: str, squash) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1)
        self.conv2, self.conv3 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.hidden, self.head = nn.Linear(4 * 12 * 12, 5), nn.Linear(5, 3)
        self.reader, self.squash = reader, squash

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = nn.functional.relu6(self.conv(x))
        g = a * torch.tanh(self.fc(a.mean((2, 3), keepdim=True)))
        if self.reader == "linear":
            return self.head(self.squash(self.hidden(g.flatten(1))))
        h = self.conv2(g) if self.reader == "conv" else g + self.conv3(x)
        return self.head(self.squash(h).mean((2, 3)).repeat(1, 2)[:, :5])


@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
@pytest.mark.parametrize("squash", ["tanh", "sigmoid", "hardtanh"])
@pytest.mark.parametrize("reader", ["linear", "conv", "residual sum"])
def test_a_squashing_activation_after_a_layer_reading_the_product_is_a_signal(reader, squash, mode):
    """Found by the differential fuzzing (`tests/ctc/fuzz_models.py`, seed 24):
    ``tanh(linear(relu6(a) * tanh(s)))`` read by a linear layer was refused at the output. The
    layer carried the product's deferral on as if it were attention scores (losing that it is a
    product of two gate tensors), and the tanh ended it as a gate of the full pass only; the
    layer reads the product as a signal, so its copies are computed there."""
    activation = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "hardtanh": nn.Hardtanh()}
    _assert_equals_the_spec_and_adds_up(SquashedAfterALayer(reader, activation[squash]), mode)
