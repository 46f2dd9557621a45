"""A 2-d weight whose row count equals the batch of copies is a weight, not a per-copy constant.

In ``h @ W`` with a 2-d signal ``h`` (B, k) and a 2-d weight ``W`` (k, n), ``W``'s dim 0 is the
product's inner dim, not the batch: the matmul rule checks a constant's rows against the copies
only for batched (3-d and more) products. In ``einsum('bk,nk->bn', h, W)`` the weight's first
index is not the signal's batch index: the einsum rule checks only constants whose first index
is the signal's. One image with two features is a batch of a few copies;
a weight with exactly that many rows (its rows differ, as a weight's do) must not be taken for a
constant whose rows should be alike: the scores add up to the logit, however many rows.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from .exactness import assert_proportional_adds_up, random_case


class _WeightTimesSignal(nn.Module):
    """``h @ W`` (``W`` of ``rows`` rows), or with ``einsum`` ``h`` times ``W`` (``rows`` rows)
    transposed."""

    def __init__(self, rows: int, written: str) -> None:
        super().__init__()
        self.written = written
        self.stem = nn.Linear(3, rows if written == "matmul" else 2)
        self.weight = nn.Parameter(torch.randn(rows, 2))
        self.head = nn.Linear(2 if written == "matmul" else rows, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x.mean((2, 3))))
        if self.written == "matmul":
            return self.head(h @ self.weight)
        return self.head(torch.einsum("bk,nk->bn", h, self.weight))


@pytest.mark.parametrize("written", ["matmul", "einsum"])
@pytest.mark.parametrize("rows", [2, 3, 4, 5])
def test_a_weight_with_as_many_rows_as_copies_is_accepted(rows: int, written: str) -> None:
    model, x, _ = random_case(lambda: _WeightTimesSignal(rows, written), scale=1.0)
    halves = (torch.arange(8) // 4).view(1, 1, 8, 1).expand(1, 1, 8, 8)  # two features
    assert_proportional_adds_up(model, x[:1], halves, 1, relative=1e-10)
