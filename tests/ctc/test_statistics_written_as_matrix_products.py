"""A normalisation's statistic reduced by a matrix product is the full image's, as a mean is.

``(x - u).pow(2).mean(-1)`` is the full image's variance (``pow`` of the signal is a gate tensor,
and what a mean of it computes may divide the signal). Written with a matrix product,
``(x - u).pow(2) @ w`` with ``w`` a column of ``1 / D`` (or ``einsum``), it gave the same scores
until matrix products began to read a gate tensor that carries copies as their signal (for
``sigmoid(h) @ w``): the square was then read as a signal, its ``sqrt`` had no rule, and the
model was refused. A power of the signal stays the statistic it is under a mean.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from .exactness import assert_exact_in_every_mode, assert_same_scores_in_every_mode, random_case


class _WrittenOutNorm(nn.Module):
    """A LayerNorm over 6 channels of each position written out; its statistics reduced by
    ``mean``, ``@`` (either side) or ``einsum``, the square by ``pow`` or ``*``."""

    def __init__(self, reduce: str, square: str) -> None:
        super().__init__()
        self.reduce, self.square = reduce, square
        self.stem, self.head = nn.Conv2d(3, 6, 3, padding=1), nn.Linear(6, 3)

    def _mean(self, t: torch.Tensor) -> torch.Tensor:
        column = torch.full((t.shape[-1], 1), 1.0 / t.shape[-1], dtype=t.dtype)
        if self.reduce == "matmul":
            return t @ column
        if self.reduce == "transposed":  # the column first, the square's transpose (a view)
            return (column.t() @ t.transpose(1, 2)).transpose(1, 2)
        if self.reduce == "einsum":
            return torch.einsum("btc,cd->btd", t, column)
        return t.mean(-1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x).flatten(2).transpose(1, 2)  # (B, HW, 6)
        d = h - self._mean(h)
        squared = d.pow(2) if self.square == "pow" else d * d
        y = d / torch.sqrt(self._mean(squared) + 1e-5)
        return self.head(torch.relu(y).mean(1))


@pytest.mark.parametrize("square", ["pow", "mul"])
@pytest.mark.parametrize("reduce", ["matmul", "transposed", "einsum"])
def test_a_variance_reduced_by_a_matrix_product_scores_as_its_mean(reduce, square):
    model, x, mask = random_case(lambda: _WrittenOutNorm(reduce, square))
    mean, _, _ = random_case(lambda: _WrittenOutNorm("mean", square))
    assert_exact_in_every_mode(model, x, mask, 1)
    assert_same_scores_in_every_mode(model, mean, x, mask, 1, rtol=1e-10, atol=1e-12)
