"""Activations written with clamp, erf, PReLU, maximum, abs and max over a dim are exact gates.

``clamp``/``clip`` with constant bounds is ``hardtanh``'s rescale gate (its output a gate tensor
with both bounds, so hard-swish written ``x * (x + 3).clamp(0, 6) / 6`` is exact); ``erf`` is a
squashing activation whose output is a gate tensor (GELU written ``0.5 * x * (1 + erf(x /
sqrt(2)))``); ``F.prelu`` is ``leaky_relu``'s gate with the learned slope per channel;
``torch.maximum`` with a constant is ``clamp`` by it; ``abs`` is the gate copy's sign; and a
max over dims of one example (CBAM's ``torch.max(x, dim=1, keepdim=True)[0]``) takes max
pooling's switches. Exact means: ``"proportional"`` scores add up to the logit (float64) and
equal the spec's, also for one image; ``"none"`` is gradient x input of the network with these
gates held fixed; the Zennit attributor equals the Captum class in all three modes; and each
written-out form gives the scores of the torch module it stands for. A max over dim 0, the
indices ``max`` returns and an input-dependent bound are refused with a message that says what
to write (the maximum of two signals is tested in ``test_gates_written_out.py``).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from .exactness import (
    assert_equals_the_spec,
    assert_none_is_gradient_x_input,
    assert_proportional_adds_up,
    assert_refused,
    assert_zennit_equals_captum,
    feature_scores,
    held_fixed,
    random_case,
)

C = 8


def _ratio(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``y / x`` held fixed, 0 where ``x = 0``: a rescale gate of the linearised network."""
    return torch.where(x != 0, y / torch.where(x != 0, x, 1.0), 0.0).detach()


def _at_max(x: torch.Tensor, dim: int, largest: bool = True) -> torch.Tensor:
    """``x`` gathered at its argmax (argmin) over ``dim``, held fixed, keeping the dim."""
    index = (x.argmax if largest else x.argmin)(dim, keepdim=True)
    return x.gather(dim, index.detach())


class Block(nn.Module):
    """One activation written ``kind``'s way; ``frozen`` holds its gate fixed by hand."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.prelu = nn.PReLU(1 if "one slope" in kind else C)
        self.spatial = nn.Conv2d(2, 1, 3, padding=1)
        self.register_buffer("low", -torch.rand(C, 1, 1) * 0.5 - 0.1)
        self.register_buffer("high", torch.rand(C, 1, 1) * 0.5 + 0.1)
        self.frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind, frozen = self.kind, self.frozen
        if kind == "clamp(0, 6)":
            return x * _ratio(x.clamp(0, 6), x) if frozen else x.clamp(0, 6)
        if kind == "F.relu6":
            return x * _ratio(F.relu6(x), x) if frozen else F.relu6(x)
        if kind in ("clamp(min=0)", "F.relu", "maximum with zeros_like"):
            if frozen:
                return x * (x > 0).detach()
            if kind == "F.relu":
                return F.relu(x)
            if kind == "maximum with zeros_like":
                return torch.maximum(x, torch.zeros_like(x))
            return torch.clamp(x, min=0)
        if kind == "clip(max=0.3)":
            return x * _ratio(x.clip(max=0.3), x) if frozen else x.clip(max=0.3)
        if kind == "clamp_ in place, tensor bounds":
            if frozen:
                return x * _ratio(torch.clamp(x, self.low, self.high), x)
            return x.clamp_(self.low, self.high)
        if kind == "clamp_min_":
            return x * _ratio(x.clamp_min(-0.2), x) if frozen else x.clamp_min_(-0.2)
        if kind == "minimum with a buffer":
            return x * _ratio(torch.minimum(x, self.high), x) if frozen else x.minimum(self.high)
        if kind in ("hard swish by clamp", "nn.Hardswish"):
            gate = (x + 3).clamp(0, 6) / 6
            if frozen:
                return x * gate.detach()
            return x * gate if kind == "hard swish by clamp" else F.hardswish(x)
        if kind in ("SE hard sigmoid by clamp", "SE F.hardsigmoid"):
            s = x.mean((2, 3), keepdim=True)
            gate = (s + 3).clamp(0, 6) / 6 if "clamp" in kind else F.hardsigmoid(s)
            return x * (gate.detach() if frozen else gate)
        if kind in ("GELU by erf", "nn.GELU"):
            if frozen:
                return 0.5 * x * (1 + torch.erf(x / math.sqrt(2))).detach()
            if kind == "nn.GELU":
                return F.gelu(x)
            return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
        if kind == "SE special.erfc":
            gate = torch.special.erfc(x.mean((2, 3), keepdim=True))
            return x * (gate.detach() if frozen else gate)
        if kind == "SE erf_ in place":
            s = x.mean((2, 3), keepdim=True)
            return x * (torch.erf(s).detach() if frozen else s.erf_())
        if kind.startswith("nn.PReLU"):
            if frozen:
                slope = (
                    self.prelu.weight.view(-1, 1, 1)
                    if self.prelu.weight.numel() > 1
                    else (self.prelu.weight)
                )
                return x * torch.where(x > 0, 1.0, slope).detach()
            return self.prelu(x)
        if kind == "F.leaky_relu, one slope":
            slope = float(self.prelu.weight.detach())
            return x * torch.where(x > 0, 1.0, slope) if frozen else F.leaky_relu(x, slope)
        if kind in ("abs", "abs_ in place", "relu(x) + relu(-x)", "stack, amax"):
            if frozen:
                return x * torch.sign(x).detach()
            if kind == "abs":
                return x.abs()
            if kind == "abs_ in place":
                return torch.abs_(x)
            if kind == "stack, amax":
                return torch.stack([x, -x], 1).amax(1)
            return F.relu(x) + F.relu(-x)
        if kind in ("amax over channels", "max_pool3d over channels"):
            if frozen:
                m = _at_max(x, 1)
            elif kind == "amax over channels":
                m = x.amax(1, keepdim=True)
            else:
                m = F.max_pool3d(x.unsqueeze(1), (C, 1, 1)).squeeze(1)
            gate = torch.sigmoid(m)  # SiLU of the channels' maximum, added to the signal
            return x + m * (gate.detach() if frozen else gate)
        if kind == "CBAM spatial attention":
            top = _at_max(x, 1) if frozen else torch.max(x, dim=1, keepdim=True)[0]
            gate = torch.sigmoid(self.spatial(torch.cat([x.mean(1, keepdim=True), top], 1)))
            return x * (gate.detach() if frozen else gate)
        if kind == "max(1).values, amin over positions":
            if frozen:
                top = _at_max(x, 1)
                low = _at_max(x.flatten(2), 2, largest=False).unsqueeze(-1)
            else:
                top = x.max(1).values.unsqueeze(1)
                low = torch.amin(x, dim=(2, 3), keepdim=True)
            return x + top - low
        raise AssertionError(kind)


EXACT = [
    "clamp(0, 6)",
    "clamp(min=0)",
    "maximum with zeros_like",
    "clip(max=0.3)",
    "clamp_ in place, tensor bounds",
    "clamp_min_",
    "minimum with a buffer",
    "hard swish by clamp",
    "SE hard sigmoid by clamp",
    "GELU by erf",
    "SE special.erfc",
    "SE erf_ in place",
    "nn.PReLU per channel",
    "nn.PReLU one slope",
    "abs",
    "abs_ in place",
    "stack, amax",
    "amax over channels",
    "CBAM spatial attention",
    "max(1).values, amin over positions",
]

#: Each written-out form and the torch module (or supported form) it stands for.
SAME_AS = [
    ("clamp(0, 6)", "F.relu6"),
    ("clamp(min=0)", "F.relu"),
    ("maximum with zeros_like", "F.relu"),
    ("hard swish by clamp", "nn.Hardswish"),
    ("SE hard sigmoid by clamp", "SE F.hardsigmoid"),
    ("GELU by erf", "nn.GELU"),
    ("nn.PReLU one slope", "F.leaky_relu, one slope"),
    ("abs", "relu(x) + relu(-x)"),
    ("stack, amax", "relu(x) + relu(-x)"),
    ("amax over channels", "max_pool3d over channels"),
]


class Net(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.stem, self.block, self.head = nn.Conv2d(3, C, 3, padding=1), block, nn.Linear(C, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.block(self.stem(x))).mean((2, 3)))


def _case(kind: str) -> tuple[Net, torch.Tensor, torch.Tensor]:
    return random_case(lambda: Net(Block(kind)))


@pytest.mark.parametrize("kind", EXACT)
def test_proportional_scores_add_up_and_equal_the_spec(kind: str) -> None:
    model, x, mask = _case(kind)
    scores = assert_proportional_adds_up(model, x, mask, 1, relative=1e-10)
    assert_equals_the_spec(model, x, mask, 1, scores, relative=1e-10)


@pytest.mark.parametrize("kind", EXACT)
def test_one_image_adds_up_to_its_logit(kind: str) -> None:
    model, x, mask = _case(kind)
    assert_proportional_adds_up(model, x[:1], mask, 1, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", EXACT)
def test_none_is_gradient_x_input_with_the_gates_held_fixed(kind: str) -> None:
    model, x, mask = _case(kind)
    same = {"rtol": 1e-12, "atol": 1e-12}
    linearised = held_fixed(model, model.block)
    assert_none_is_gradient_x_input(
        model, x, mask, 1, linearised, same_output=same, rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
@pytest.mark.parametrize(("written", "module"), SAME_AS)
def test_each_written_form_scores_as_the_module_it_stands_for(
    written: str, module: str, mode: str
) -> None:
    model, x, mask = _case(written)
    other, _, _ = _case(module)
    torch.testing.assert_close(model(x), other(x), rtol=1e-12, atol=1e-12)
    got = feature_scores(model, x, mask, 1, mode).scores
    expected = feature_scores(other, x, mask, 1, mode).scores
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
@pytest.mark.parametrize(
    "kind",
    ["hard swish by clamp", "GELU by erf", "nn.PReLU per channel", "abs", "CBAM spatial attention"],
)
def test_the_zennit_attributor_equals_the_captum_class(kind: str, mode: str) -> None:
    model, x, mask = _case(kind)
    assert_zennit_equals_captum(model, x, mask, 1, mode)


@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
@pytest.mark.parametrize("kind", ["nn.PReLU per channel", "nn.PReLU one slope"])
def test_the_composite_hooks_prelu_modules_as_leaky_relu(kind: str, mode: str) -> None:
    """``nn.PReLU`` has a composite rule: exact also where functional calls are refused."""
    net, x, mask = _case(kind)
    pool = (nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = nn.Sequential(net.stem, net.block.prelu, *pool, net.head).eval()
    assert_zennit_equals_captum(model, x, mask, 1, mode, functional="raise")


class _Refused(nn.Module):
    def __init__(self, operation) -> None:
        super().__init__()
        self.operation = operation
        self.stem, self.head = nn.Conv2d(3, C, 3, padding=1), nn.Linear(C, 2)
        self.register_buffer("low", torch.zeros(C, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.operation(self, self.stem(x)).mean((2, 3)))


@pytest.mark.parametrize(
    "operation, message",
    [
        (
            lambda m, s: s * s.amax(0, keepdim=True).sigmoid(),
            r"torch\.Tensor\.amax in the model \(_Refused\): .*over dim 0.*x\.amax\(1, keepdim",
        ),
        (lambda m, s: s * torch.sigmoid(s.max()), r"torch\.Tensor\.max .*over dim 0"),
        (
            lambda m, s: s.gather(1, s.max(1, keepdim=True)[1]).expand_as(s),
            r"torch\.Tensor\.gather .*reads the indices that torch\.Tensor\.max returned.*"
            r"use the values alone",
        ),
        (
            lambda m, s: s + torch.min(s, 1, keepdim=True).indices.to(s.dtype),
            r"torch\.Tensor\.to .*reads the indices that torch\.min returned",
        ),
        (
            lambda m, s: s.clamp(min=s.mean(1, keepdim=True)),
            r"torch\.Tensor\.clamp .*its bound depends on the input; only constant bounds",
        ),
        (
            lambda m, s: s[:, :1].clamp(min=m.low),
            r"torch\.Tensor\.clamp .*broadcasts the signal of shape .* to a larger shape",
        ),
    ],
)
def test_refusals_say_what_to_write(operation, message: str) -> None:
    assert_refused(_Refused(operation).double().eval(), message, modes=("proportional", "none"))


@pytest.mark.parametrize("kind", ["amax over channels", "max(1).values, amin over positions"])
def test_none_takes_the_gradient_shortcut_past_max(kind: str, monkeypatch) -> None:
    """The indices ``max`` returns beside its values carry no gradient and cut off nothing."""
    from ctc_plugin.ctc.attribution import CTC

    results = []
    shortcut = CTC._run_gradient

    def spy(self, *args, **kwargs):
        results.append(shortcut(self, *args, **kwargs))
        return results[-1]

    monkeypatch.setattr(CTC, "_run_gradient", spy)
    model, x, mask = _case(kind)
    CTC(model, bias_sharing="none").attribute(x, 1, feature_mask=mask)
    assert results and results[-1] is not None  # None: it fell back to the pass of copies
