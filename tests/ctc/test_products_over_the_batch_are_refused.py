"""A matrix product that sums over the batch dim (which holds the copies) is refused by name.

``ones(B, B) / B @ h`` (a 2-d signal as the second operand) and ``h[:, 0] @ ones(B, d)`` (a
1-d signal as the first) both multiply over dim 0 of the signal: in a CTC pass that dim holds
the feature copies of every example, so the product would add the copies (and the examples)
together. Both are refused with "multiplies over the dimension that holds the copies".

Operands that hold the batch along different dims pair every example with every other: timm's
CSATv2 computes its spatial attention as ``q @ k.transpose(-1, -2)`` of (B, N) tensors, a
(B, B) attention across the batch, and an additive pairing ``q.unsqueeze(1) + k.unsqueeze(0)``
is (B, B, N). Both are refused saying that each example would be combined with the others
(they were refused as a rule asked to run with its copies off dim 0, which did not say why).
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


class _AcrossTheBatch(nn.Module):
    """Queries, keys and values (B, N) of pooled features, paired across the batch."""

    def __init__(self, pairing: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.pairing = pairing
        self.stem, self.qkv, self.head = (
            nn.Conv2d(3, 4, 3, padding=1),
            nn.Linear(1, 3),
            nn.Linear(16, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = nn.functional.adaptive_avg_pool2d(self.stem(x).mean(1, keepdim=True), 4)
        q, k, v = self.qkv(tokens.flatten(2).transpose(1, 2)).unbind(-1)  # each (B, N)
        if self.pairing == "matmul":  # CSATv2's SpatialTransformerBlock
            mixed = (q @ k.transpose(-1, -2)).softmax(dim=-1) @ v
        else:
            mixed = (q.unsqueeze(1) + k.unsqueeze(0)).mean(1)
        return self.head(v + mixed)


@pytest.mark.parametrize("pairing", ["matmul", "sum"])
def test_operands_holding_the_batch_along_different_dims_are_refused_as_combining_examples(
    pairing: str,
) -> None:
    model = _AcrossTheBatch(pairing).double().eval()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    error = assert_refused(
        model,
        r"along different dims \(0 and 1\): it combines each example with the other examples",
        x=x,
        modes=("proportional", "none"),
    )
    assert "q.unsqueeze(-1) @ k.unsqueeze(-2)" in str(error)
