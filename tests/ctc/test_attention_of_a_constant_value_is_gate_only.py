"""Attention whose query and key depend on the input but whose value is a constant is gate-only.

``scaled_dot_product_attention(q(h), k(h), v)`` with a learned ``v`` is the full pass's
probabilities times a constant: no copy carries a part of it of its own, so it is a gate-only
tensor (every copy the full pass's value), like the product of gate tensors and constants. A
model whose output is computed from it is refused by name (its logit has no feature contributions
to add up to); one that multiplies the signal by it gets the full pass's factor in every copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .exactness import assert_proportional_adds_up, assert_refused

TOKENS = 5


class _ConstantValue(nn.Module):
    """Queries and keys from the tokens, a learned value; ``gated``: the attention multiplies
    the tokens instead of being the output."""

    def __init__(self, gated: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.gated = gated
        self.embed, self.q, self.k = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.value, self.head = nn.Parameter(torch.randn(1, TOKENS, 4)), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        value = self.value.expand(x.shape[0], -1, -1)
        attended = F.scaled_dot_product_attention(self.q(h), self.k(h), value)
        return self.head((attended * h if self.gated else attended).mean(1))


def _case(gated: bool):
    model = _ConstantValue(gated).double().eval()
    x = torch.randn(2, TOKENS, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mask = torch.tensor([0, 0, 1, 2, 2]).view(1, TOKENS, 1).expand(1, TOKENS, 3)
    return model, x, mask


def test_an_output_from_the_attention_of_a_constant_value_is_refused_by_name() -> None:
    model, x, mask = _case(gated=False)
    assert_refused(model, "the model's output is computed from its output", x=x, mask=mask)


def test_the_attention_of_a_constant_value_gates_the_signal_and_adds_up() -> None:
    model, x, mask = _case(gated=True)
    assert_proportional_adds_up(model, x, mask, 1, relative=1e-10)
