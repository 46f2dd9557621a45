"""A product of the signal with a sigmoid of the signal: the sigmoid enters as the full pass's.

``torch.sigmoid`` of a signal is a gate tensor that may multiply the signal: in ``sigmoid(s) @ v``
(attention with sigmoid scores computed by a linear map of the tokens) or the same product
written with ``einsum``, every copy of ``v`` is mixed by the full input's ``sigmoid(s)``, not by
the copy's own rows of the gate tensor. Against the network written out by hand: ``"none"``
scores are the gradient x input of the network with ``sigmoid(s)`` detached, and
``"proportional"`` scores add up to the logit.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from ctc_plugin.ctc.speedups import DEFAULT, SPEC

from .exactness import assert_none_is_gradient_x_input, assert_proportional_adds_up

TOKENS, WIDTH = 5, 6


class _SigmoidMixing(nn.Module):
    """Tokens (N, T, 3) embedded; scores ``s`` (N, T, T) and values a linear map of them;
    ``sigmoid(s)`` mixes the values (``written`` as ``matmul`` or ``einsum``)."""

    def __init__(self, written: str) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.written = written
        self.embed, self.scores = nn.Linear(3, WIDTH), nn.Linear(WIDTH, TOKENS)
        self.value, self.head = nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, 3)

    def forward(self, x: torch.Tensor, linearised: bool = False) -> torch.Tensor:
        h = self.embed(x)
        gate = torch.sigmoid(self.scores(h))
        gate = gate.detach() if linearised else gate
        v = self.value(h)
        mixed = gate @ v if self.written == "matmul" else torch.einsum("bts,bsc->btc", gate, v)
        return self.head(mixed.mean(1))


def _case(written: str):
    model = _SigmoidMixing(written).double().eval()
    x = torch.randn(2, TOKENS, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    mask = torch.tensor([0, 0, 1, 2, 2]).view(1, TOKENS, 1).expand(1, TOKENS, 3)
    return model, x, mask


@pytest.mark.parametrize("speedups", [SPEC, DEFAULT], ids=["spec", "default"])
@pytest.mark.parametrize("written", ["matmul", "einsum"])
def test_none_scores_are_the_gradient_x_input_with_the_sigmoid_held(written, speedups):
    model, x, mask = _case(written)
    assert_none_is_gradient_x_input(
        model, x, mask, [0, 2], partial(model, linearised=True), speedups=(speedups,),
        same_output={}, rtol=1e-10, atol=1e-12,
    )  # fmt: skip


@pytest.mark.parametrize("written", ["matmul", "einsum"])
def test_proportional_scores_add_up_to_the_logit(written):
    model, x, mask = _case(written)
    assert_proportional_adds_up(model, x, mask, [0, 2], rtol=1e-10, atol=1e-10)
