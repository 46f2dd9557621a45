"""``torch.mm``, ``torch.mv`` and ``torch.tensordot`` are read as the ``@``/``einsum`` they are.

A linear layer written ``torch.mm(h, w)`` or ``torch.tensordot(h, w, dims=1)`` computes what
``h @ w`` computes, yet both were refused as operations without a rule. ``mm``/``mv`` take the
``matmul`` row; ``tensordot`` is written out as its ``einsum`` (the first operand's kept dims,
then the second's), so it is refused exactly where that ``einsum`` would be, with advice of its
own where its output cannot start with the signal's batch dim.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from .exactness import (
    assert_exact_in_every_mode,
    assert_refused,
    assert_same_scores_in_every_mode,
    assert_zennit_equals_captum,
    random_case,
)

WRITTEN = {
    "matmul": lambda h, w: h @ w,
    "mm": torch.mm,
    "Tensor.mm": lambda h, w: h.mm(w),
    "mv": lambda h, w: torch.stack([torch.mv(h, column) for column in w.unbind(1)], 1),
    "Tensor.mv": lambda h, w: torch.stack([h.mv(column) for column in w.unbind(1)], 1),
    "mv vec=": lambda h, w: torch.stack([torch.mv(h, vec=column) for column in w.unbind(1)], 1),
    "mm mat2=": lambda h, w: torch.mm(h, mat2=w),
    "tensordot dims=1": lambda h, w: torch.tensordot(h, w, dims=1),
    "tensordot dims=lists": lambda h, w: torch.tensordot(h, w, dims=([1], [0])),
    "tensordot negative dims": lambda h, w: torch.tensordot(h, w, dims=([-1], [-2])),
}


class _Projected(nn.Module):
    """A convolution, ReLU, spatial mean, then ``written(h, weight)`` and a bias."""

    def __init__(self, written: str) -> None:
        super().__init__()
        self.written = WRITTEN[written]
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.weight, self.bias = nn.Parameter(torch.empty(6, 3)), nn.Parameter(torch.empty(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x)).mean((2, 3))
        return self.written(h, self.weight) + self.bias


class _TokensDot(nn.Module):
    """Tokens ``(B, T, C)`` contracted with a ``(C, D)`` weight over their last dim."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.weight = nn.Parameter(torch.empty(4, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.relu(self.stem(x)).flatten(2).transpose(1, 2)
        return torch.tensordot(tokens, self.weight, dims=([2], [0])).mean(1)


@pytest.mark.parametrize("written", [w for w in WRITTEN if w != "matmul"])
def test_each_form_scores_as_the_matmul_form(written: str) -> None:
    model, x, mask = random_case(lambda: _Projected(written))
    reference, _, _ = random_case(lambda: _Projected("matmul"))
    assert_exact_in_every_mode(model, x, mask, target=1)
    assert_same_scores_in_every_mode(model, reference, x, mask, 1, rtol=1e-12, atol=1e-12)


def test_tensordot_of_tokens_is_exact_and_zennit_agrees() -> None:
    model, x, mask = random_case(_TokensDot)
    assert_exact_in_every_mode(model, x, mask, target=0)
    assert_zennit_equals_captum(model, x, mask, 0, "proportional")


class _SignalSecond(nn.Module):
    """``tensordot(w, h)``: the weight's kept dim leads the output, not the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.weight = nn.Parameter(torch.randn(4, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x)).mean((2, 3))
        return torch.tensordot(self.weight, h, dims=([0], [1])).t()


class _SummedOverBatch(nn.Module):
    """``tensordot(h, w, dims=2)`` of a ``(B, C)`` signal sums over the batch dim."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x)).mean((2, 3))
        return torch.tensordot(h, torch.ones_like(h), dims=2).expand(x.shape[0], 1)


def test_a_signal_whose_batch_dim_does_not_lead_is_refused_with_what_to_do() -> None:
    model = _SignalSecond().double().eval()
    assert_refused(model, r"tensordot .*pass that tensor first and keep its dim 0")


def test_a_tensordot_over_the_batch_dim_is_refused() -> None:
    model = _SummedOverBatch().double().eval()
    assert_refused(model, r"tensordot")


def test_out_is_refused() -> None:
    def written(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.tensordot(h, w, dims=1, out=torch.empty(h.shape[0], w.shape[1]).double())

    WRITTEN["out="] = written
    try:
        model, _, _ = random_case(lambda: _Projected("out="))
        assert_refused(model, r"tensordot.*out=", target=1)
    finally:
        del WRITTEN["out="]
