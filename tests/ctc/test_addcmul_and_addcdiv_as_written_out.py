"""``addcmul`` and ``addcdiv`` score and refuse as ``input + value * tensor1 * tensor2`` does.

``torch.addcmul(input, tensor1, tensor2, value=v)`` is ``input + v * tensor1 * tensor2``
(``addcdiv``: ``/ tensor2``); ResMLP's ``Affine`` is ``torch.addcmul(beta, alpha, x)``. CTC
writes the call out in those operations before anything else of the pass looks at it, so
each model below, run once with the call and once with the form written out by hand, gets the
same scores in every bias-sharing mode (float64, 1e-10) and the same refusals. Before, the
pass's checks of the call itself ran first: a product of two gate tensors (a sigmoid's and a
tanh's output) added to the signal, which the written-out form reads as a product of two
signals, was taken for a gate and refused at the model's output.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from .exactness import assert_refused, assert_same_scores_in_every_mode, random_case

D = 8
MODES = ("none", "proportional", "reference")
TIGHT = {"rtol": 1e-10, "atol": 1e-12}


def _addcmul(call: bool) -> Callable:
    """``torch.addcmul``, or its form written out."""
    if call:
        return torch.addcmul
    return lambda base, first, second, value=1: base + value * first * second


def _addcdiv(call: bool) -> Callable:
    """``torch.addcdiv``, or its form written out."""
    if call:
        return torch.addcdiv
    return lambda base, first, second, value=1: base + value * first / second


def _scores(m: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """Every token's attention logits ``a(t) @ b(t)^T`` (a product of two signals)."""
    return m.a(t) @ m.b(t).mT


#: name: what the block computes of the tokens ``t`` (B, T, D), given the module and
#: ``addcmul``, ``addcdiv`` (the calls or their forms written out).
BODIES: dict[str, Callable] = {
    "ResMLP's Affine, addcmul(beta, alpha, x)": lambda m, t, mul, div: mul(m.w, m.w, t),
    "the signal plus a product of two gate tensors": lambda m, t, mul, div: mul(
        t, torch.sigmoid(m.a(t)), torch.tanh(m.b(t))
    ),
    "the signal plus a product of two gate tensors times a constant": lambda m, t, mul, div: mul(
        t, torch.sigmoid(m.a(t)) * torch.tanh(m.b(t)), m.w
    ),
    "a product of two signals": lambda m, t, mul, div: mul(t, m.a(t), m.b(t), value=0.5),
    "a quotient by a signal": lambda m, t, mul, div: div(t, m.a(t), m.b(t) + 5, value=0.5),
    "logits (deferred) read as a signal": lambda m, t, mul, div: mul(
        t.mean(1, keepdim=True), _scores(m, t)[..., :D], m.w
    ),
    "logits plus logits, then softmax": lambda m, t, mul, div: (
        mul(_scores(m, t), m.a(t) @ m.a(t).mT, m.w[0], value=0.5).softmax(-1) @ t
    ),
    "a quotient by a gate-only tensor": lambda m, t, mul, div: div(
        t, t, _scores(m, t).softmax(-1)[..., :D] + 1
    ),
    "sequence first": lambda m, t, mul, div: mul(
        t.transpose(0, 1), m.a(t).transpose(0, 1), m.w
    ).transpose(0, 1),
}

#: name: (the block, a pattern of the refusal's reason, what the refusal with the call names),
#: refused with the call as written out.
REFUSED: dict[str, tuple[Callable, str]] = {
    "the signal plus probabilities, read as a signal": (
        lambda m, t, mul, div: mul(
            t[..., :1].expand(-1, -1, 16), _scores(m, t).softmax(-1), m.w[0], value=2.0
        )[..., :D],
        "a gate tensor computed for the full image only",
        # refused at the output, naming the sum that made the gate-only tensor
        "torch.add (the signal and torch.Tensor.softmax)",
    ),
    "sequence first, times probabilities": (
        lambda m, t, mul, div: mul(
            t.transpose(0, 1), _scores(m, t).softmax(-1)[..., :D].transpose(0, 1), m.w
        ).transpose(0, 1),
        "its input holds the copies along dim 1",
        "torch.addcmul (written out: torch.mul)",
    ),
}


class _Block(nn.Module):
    """A convolution's tokens, ``body`` of them, a linear layer, a ReLU, a mean and a head."""

    def __init__(self, body: Callable, call: bool) -> None:
        super().__init__()
        self.body, self.call = body, call
        self.stem = nn.Conv2d(3, D, 2, stride=2)
        self.a = nn.Linear(D, D)
        self.b = nn.Linear(D, D)
        self.w = nn.Parameter(torch.randn(D))
        self.head = nn.Linear(D, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = F.gelu(self.stem(x)).flatten(2).transpose(1, 2)  # (B, T, D)
        h = self.body(self, tokens, _addcmul(self.call), _addcdiv(self.call))
        return self.head(F.relu(self.a(h)).mean(1))


def _pair(body: Callable) -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    """The block with the call and the one written out, same parameters, same case."""
    called, x, mask = random_case(lambda: _Block(body, True))
    written = _Block(body, False).double().eval()
    written.load_state_dict(called.state_dict())
    torch.testing.assert_close(called(x), written(x), **TIGHT)
    return called, written, x, mask


@pytest.mark.parametrize("kind", BODIES)
def test_the_call_scores_as_written_out_in_every_mode(kind: str) -> None:
    called, written, x, mask = _pair(BODIES[kind])
    assert_same_scores_in_every_mode(called, written, x, mask, 0, **TIGHT)


@pytest.mark.parametrize("kind", REFUSED)
def test_the_call_is_refused_where_the_written_out_form_is(kind: str) -> None:
    body, reason, operation = REFUSED[kind]
    called, written, x, mask = _pair(body)
    error = assert_refused(called, reason, x=x, mask=mask, modes=MODES)
    by_hand = assert_refused(written, reason, x=x, mask=mask, modes=MODES)
    assert error.reason == by_hand.reason
    assert error.operation == operation
    assert error.module == by_hand.module == "the model (_Block)"
