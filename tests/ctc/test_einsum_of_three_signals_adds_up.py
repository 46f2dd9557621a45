"""An ``einsum`` of three signals read as a signal: the uniform rule, each signal a third.

The product of several signals gets its copies by the uniform rule: copy ``k`` is the mean over
the signals of the product with that signal's copy ``k`` and the others at the full pass's
values, ``(a_k b_0 c_0 + a_0 b_k c_0 + a_0 b_0 c_k) / 3``. It is linear in the copies, so where
each signal's copies add up to its full value the product's add up to ``a_0 b_0 c_0``: the
``"proportional"`` scores add up to the logit. With two signals the rule is symmetric in which
signal is held; with three it is not, so the test uses three (and a trilinear form of them).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from .exactness import assert_equals_the_spec, assert_proportional_adds_up, random_case


class _Trilinear(nn.Module):
    """Three linear maps of the pooled image, multiplied elementwise or as a trilinear form."""

    def __init__(self, equation: str) -> None:
        super().__init__()
        self.equation = equation
        self.a, self.b, self.c = (nn.Linear(3, 4) for _ in range(3))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.relu(x).mean((2, 3))
        a, b, c = self.a(pooled), self.b(pooled), self.c(pooled)
        product = torch.einsum(self.equation, a, b, c)
        return self.head(product if product.dim() == 2 else product.unsqueeze(1).expand(-1, 4))


@pytest.mark.parametrize("equation", ["bi,bi,bi->bi", "bi,bi,bi->b"])
def test_proportional_scores_of_a_product_of_three_signals_add_up(equation: str) -> None:
    model, x, mask = random_case(lambda: _Trilinear(equation), scale=1.0)
    scores = assert_proportional_adds_up(model, x, mask, 1, relative=1e-9)
    assert_equals_the_spec(model, x, mask, 1, scores, relative=1e-9)
