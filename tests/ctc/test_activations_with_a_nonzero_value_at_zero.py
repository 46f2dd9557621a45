"""Activations with ``f(0) != 0`` read as a signal: ``f(0)`` is a bias shared among the copies.

A rescale gate multiplied every copy by ``y / x`` of the gate copy. For sigmoid, softplus or
erfc, whose value at 0 is not 0, that lost ``f(0)`` where the gate copy's input was exactly 0
(``sigmoid(relu(h)) @ W`` missed 0.35 of its logit in ``"proportional"``), and near 0 the gate
``f(x) / x`` grew without bound (2e4 in timm's ``iformer_t``), so the scores reached 1e3 and
cancelled. The activation is now split into ``f(0) + (f(x) - f(0))``: every copy is multiplied
by the bounded ``(y - f(0)) / x`` and ``f(0)`` is a bias shared by the mode's own rule, as in the
same network written ``0.5 + 0.5 * tanh(x / 2)``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from .exactness import (
    assert_exact_in_every_mode,
    assert_none_is_gradient_x_input,
    assert_same_scores_in_every_mode,
    assert_zennit_equals_captum,
    feature_scores,
    held_fixed,
    random_case,
)

MODES = ("proportional", "reference", "none")


def _sigmoid_by_tanh(x: torch.Tensor) -> torch.Tensor:
    """``sigmoid(x)`` written with ``tanh`` (``f(0) = 0``) and a constant 0.5 (a bias)."""
    return 0.5 + 0.5 * torch.tanh(x / 2)


#: How the activation is written: ``"module"`` and ``"function"`` forms of each.
ACTIVATIONS = {
    "sigmoid": (nn.Sigmoid, torch.sigmoid),
    "softplus": (nn.Softplus, F.softplus),
    "hardsigmoid": (nn.Hardsigmoid, F.hardsigmoid),
}


class _ReadAsSignal(nn.Module):
    """``head(mean(f(g(stem(x))) @ W))``: the activation's output is read as a signal.

    ``g`` is ``relu`` (``before="relu"``: many exact zeros going in) or nothing; the product
    with ``W`` is ``F.linear`` or ``@``; ``f`` a module (for the Zennit composite), a function,
    or sigmoid written with tanh.
    """

    def __init__(self, activation: str, written: str = "module", before: str = "relu") -> None:
        super().__init__()
        module, function = ACTIVATIONS.get(activation, (nn.Sigmoid, torch.sigmoid))
        self.activation = {
            "module": module(),
            "function": function,
            "tanh": _sigmoid_by_tanh,
        }[written]
        self.before = nn.ReLU() if before == "relu" else nn.Identity()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.weight = nn.Parameter(torch.empty(4, 6))
        self.head = nn.Linear(4, 3)
        self.frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.before(self.stem(x))
        if self.frozen:  # the network linearised at its gates: f(0) + h (f(h) - f(0)) / h
            at_zero = self.activation(torch.zeros_like(h))
            rise = self.activation(h) - at_zero
            gate = torch.where(h != 0, rise / torch.where(h != 0, h, 1.0), 0.0).detach()
            y = at_zero + h * gate
        else:
            y = self.activation(h)
        projected = F.linear(y.flatten(2).transpose(1, 2), self.weight)  # (B, HW, 4)
        return self.head(projected.mean(1))


def _case(activation: str, written: str = "module", before: str = "relu"):
    return random_case(lambda: _ReadAsSignal(activation, written, before))


def _largest_relative_gap(model, x, mask, target: int = 1) -> float:
    """Largest relative difference between the proportional scores' sum and the logit."""
    scores = feature_scores(model, x, mask, target).scores
    logits = model(x).detach()[:, target]
    return float(((scores.sum(1) - logits).abs() / logits.abs()).max())


@pytest.mark.parametrize("before", ["relu", "none"])
@pytest.mark.parametrize("written", ["module", "function"])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_proportional_scores_add_up_to_the_logit(activation, written, before):
    """``f(relu(h)) @ W`` (half the inputs exactly 0) and ``f(h) @ W`` add up to 1e-12."""
    model, x, mask = _case(activation, written, before)
    assert _largest_relative_gap(model, x, mask) < 1e-12
    assert_exact_in_every_mode(model, x, mask, 1)  # the spec's numbers; each image alone too


@pytest.mark.parametrize("before", ["relu", "none"])
def test_sigmoid_scores_as_the_same_network_written_with_tanh(before):
    """``sigmoid(h)`` and ``0.5 + 0.5 * tanh(h / 2)``: the same scores in every mode."""
    model, x, mask = _case("sigmoid", "module", before)
    by_tanh, _, _ = _case("sigmoid", "tanh", before)
    assert_same_scores_in_every_mode(model, by_tanh, x, mask, 1, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_the_zennit_attributor_equals_the_captum_class(activation, mode):
    model, x, mask = _case(activation)
    assert_zennit_equals_captum(model, x, mask, 1, mode)


@pytest.mark.parametrize("mode", MODES)
def test_each_image_alone_gets_its_scores_in_the_batch(mode):
    model, x, mask = _case("softplus", "function")
    together = feature_scores(model, x, mask, 1, mode).scores
    for i in range(x.shape[0]):
        alone = feature_scores(model, x[i : i + 1], mask, 1, mode).scores
        torch.testing.assert_close(alone, together[i : i + 1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_none_is_gradient_x_input_of_the_split_linearisation(activation):
    """``"none"``: ``f(0)`` is a bias, left out; each copy times ``(f(x) - f(0)) / x``."""
    model, x, mask = _case(activation, "function")
    assert_none_is_gradient_x_input(
        model, x, mask, 1, held_fixed(model), same_output={"rtol": 1e-12, "atol": 1e-12}
    )


class _BoundPerChannel(nn.Module):
    """``torch.maximum(h, c)`` with a constant ``c`` per channel: ``f(0) = max(0, c)`` differs
    per unit, a bias per unit."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 3)
        self.register_buffer("bound", torch.linspace(-0.5, 1.0, 4).view(4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.maximum(self.stem(x), self.bound.expand(4, 8, 8))
        return self.head(h.mean((2, 3)))


def test_a_value_at_zero_that_differs_per_unit_is_a_bias_per_unit():
    model, x, mask = random_case(_BoundPerChannel)
    model.bound = model.bound.double()
    assert _largest_relative_gap(model, x, mask) < 1e-12
    assert_exact_in_every_mode(model, x, mask, 1)


class _Cancelling(nn.Module):
    """``3 * sigmoid(x_0 + x_1 * c)``: the two features cancel to ``0`` or to ``c - 1``."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3.0 * torch.sigmoid(x[:, :1] + x[:, 1:] * self.c)


def test_an_exact_zero_shares_sigmoid_0_equally():
    """The gate copy's input is exactly 0: each feature gets half of ``3 * sigmoid(0)``
    (before, both got 0 and the logit 1.5 was lost)."""
    x = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    scores = feature_scores(_Cancelling(1.0), x, torch.tensor([[0, 1]]), 0).scores
    torch.testing.assert_close(scores, torch.full((1, 2), 0.75, dtype=torch.float64))


def test_a_nearly_zero_input_gives_bounded_scores():
    """Near 0 the copies are multiplied by about ``sigmoid'(0) = 1/4``, not ``0.5 / x``."""
    x = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    model = _Cancelling(1.0 - 1e-12)
    scores = feature_scores(model, x, torch.tensor([[0, 1]]), 0).scores
    assert scores.abs().max() < 2.0
    torch.testing.assert_close(scores.sum(1), model(x)[:, 0], rtol=1e-14, atol=0.0)
