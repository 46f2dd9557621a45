"""A matrix product that sums over the batch dim (which holds the copies) is refused by name.

``ones(B, B) / B @ h`` (a 2-d signal as the second operand) and ``h[:, 0] @ ones(B, d)`` (a
1-d signal as the first) both multiply over dim 0 of the signal: in a CTC pass that dim holds
the feature copies of every example, so the product would add the copies (and the examples)
together. Both are refused with "multiplies over the dimension that holds the copies".
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from .exactness import assert_refused


class _BatchMixing(nn.Module):
    """Pooled features ``h`` (B, 4) minus a product of ``h`` over the batch."""

    def __init__(self, vector: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.vector = vector
        self.stem, self.head = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x.mean((2, 3)))
        batch = h.shape[0]
        if self.vector:
            mixed = h[:, 0] @ h.new_ones(batch, 4) / batch  # (4,): broadcast over the batch
        else:
            mixed = h.new_ones(batch, batch) / batch @ h  # the batch mean of every row
        return self.head(h - mixed)


@pytest.mark.parametrize("vector", [False, True], ids=["matrix @ signal", "vector signal @ matrix"])
def test_a_product_over_the_batch_dim_is_refused_by_name(vector: bool) -> None:
    model = _BatchMixing(vector).double().eval()
    assert_refused(model, r"multiplies over the dimension that holds the copies")
