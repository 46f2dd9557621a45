"""Review of the rules for products of two signals, switches, comparisons and ``torch.where``.

Inputs the tests of ``test_gates_written_out.py`` did not try: a constant operand of
``torch.where`` that broadcasts the signal to a larger shape (it crashed inside the bias
sharing); a masked maximum filled with ``-inf`` (exact, pinned); a gate tensor (a sigmoid's
output) masked by ``masked_fill`` or ``torch.where`` with a constant condition, which must stay a
gate tensor as it does when the model multiplies it by the same 0/1 mask; and ``out=``, which
every operation of the pass refuses (the model's buffer would keep its zeros, silently).
"""

from __future__ import annotations

import pytest
import torch

from .exactness import (
    assert_equals_the_spec,
    assert_none_is_gradient_x_input,
    assert_proportional_adds_up,
    assert_refused,
    feature_scores,
    held_fixed,
    random_case,
)
from .test_gates_written_out import C, TwoBranches

_LEFT_HALF = torch.zeros(8, 8, dtype=torch.bool)
_LEFT_HALF[:, :4] = True


def _case(operation, linearised):
    """``TwoBranches`` of ``operation`` (see ``random_case``): two images, a 3 x 3 grid."""
    return random_case(lambda: TwoBranches(operation, linearised))


def _pooled_or_constant(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Each channel's mean where a column mask holds, a constant map elsewhere: (N, C, 8, 8).

    The signal is (N, C, 1, 1); the constant operand (1, C, 8, 8) broadcasts it to the map.
    """
    constant = torch.linspace(-1.0, 1.0, C * 64, dtype=a.dtype).view(1, C, 8, 8)
    return torch.where(_LEFT_HALF[0], a.mean((2, 3), keepdim=True), constant)


@pytest.mark.parametrize("images", [2, 1])
def test_a_constant_operand_that_broadcasts_the_signal_is_exact(images: int) -> None:
    model, x, mask = _case(_pooled_or_constant, _pooled_or_constant)
    x = x[:images]
    scores = assert_proportional_adds_up(model, x, mask, 1, rtol=1e-10, atol=1e-10)
    assert_equals_the_spec(model, x, mask, 1, scores, rtol=1e-9, atol=1e-12)
    assert_none_is_gradient_x_input(
        model, x, mask, 1, held_fixed(model), same_output={}, rtol=1e-9, atol=1e-12
    )


#: A sigmoid's output masked with a constant condition, and the same written as products and
#: sums with constants (which keep a gate tensor a gate tensor).
MASKED_GATES = {
    "sigmoid(b).masked_fill(mask, 0)": (
        lambda a, b: a * torch.sigmoid(b).masked_fill(_LEFT_HALF, 0.0),
        lambda a, b: a * (torch.sigmoid(b) * ~_LEFT_HALF),
    ),
    "torch.where(mask, sigmoid(b), 1)": (
        lambda a, b: a * torch.where(_LEFT_HALF, torch.sigmoid(b), 1.0),
        lambda a, b: a * (torch.sigmoid(b) * _LEFT_HALF + ~_LEFT_HALF),
    ),
}


@pytest.mark.parametrize("mode", ["proportional", "none"])
@pytest.mark.parametrize("kind", MASKED_GATES)
def test_a_gate_tensor_masked_by_a_constant_stays_a_gate(kind: str, mode: str) -> None:
    masked, as_products = MASKED_GATES[kind]
    model, x, mask = _case(masked, masked)
    reference, _, _ = _case(as_products, as_products)
    torch.testing.assert_close(model(x), reference(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        feature_scores(model, x, mask, 1, mode).scores,
        feature_scores(reference, x, mask, 1, mode).scores,
        rtol=1e-9,
        atol=1e-12,
    )


def _masked_maximum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Each channel's maximum over the right half of the map (a masked max pooling), as a map."""
    masked = a.masked_fill(_LEFT_HALF, float("-inf"))
    return masked.amax((2, 3), keepdim=True).expand_as(a)


@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
def test_a_masked_maximum_filled_with_minus_infinity_is_exact(mode: str) -> None:
    """The copies' shares of ``-inf`` (not finite) lie where the full image's maximum is not."""
    model, x, mask = _case(_masked_maximum, _masked_maximum)
    if mode == "proportional":
        scores = assert_proportional_adds_up(model, x, mask, 1, rtol=1e-10, atol=1e-10)
        assert_equals_the_spec(model, x, mask, 1, scores, rtol=1e-9, atol=1e-12)
    elif mode == "none":
        assert_none_is_gradient_x_input(model, x, mask, 1, held_fixed(model), rtol=1e-9, atol=1e-12)
    else:
        assert feature_scores(model, x, mask, 1, mode).scores.isfinite().all()


def _into_out(operation):
    """``operation(a, b, out=buffer)`` written into a buffer the model made, then read."""

    def written(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        buffer = torch.zeros(a.shape, dtype=torch.bool if operation is torch.gt else a.dtype)
        operation(a, b, out=buffer)
        return a * buffer if operation is torch.gt else buffer + b

    return written


@pytest.mark.parametrize(
    "operation",
    [
        lambda a, b, out: torch.where(_LEFT_HALF, a, b, out=out),
        torch.maximum,
        torch.mul,
        torch.gt,
        lambda a, b, out: torch.clamp(a, min=0.0, out=out),
    ],
    ids=["where", "maximum", "mul", "gt", "clamp"],
)
def test_writing_into_out_is_refused(operation) -> None:
    with torch.no_grad():  # out= refuses autograd in the model itself
        model = TwoBranches(_into_out(operation), _into_out(operation)).double().eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
    assert_refused(model, r"out=")
