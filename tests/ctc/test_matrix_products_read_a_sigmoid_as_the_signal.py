"""A matrix product reads a sigmoid or tanh of the signal as its signal where no other is there.

``torch.sigmoid(h)`` is a gate tensor that carries copies: it may multiply the signal as a gate,
and a linear layer reads it as the signal (its copies rescaled). ``matmul`` took it for a gate
whenever no other signal was there, so ``sigmoid(h) @ w`` (a linear layer written with ``@``)
and iFormer's modulation attention written out (``v @ softmax(q^T k)^T`` with values
``v = sigmoid(.)``, timm's ``SHMA`` without fused attention) gave a gate-only tensor and the
model was refused at its output, while ``F.linear`` and ``scaled_dot_product_attention`` explain
the same networks. Now each gives the scores of its module form in every mode; a product of two
such gate tensors read as a signal takes the uniform rule, as an elementwise one does.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from .exactness import (
    assert_exact_in_every_mode,
    assert_same_scores_in_every_mode,
    assert_zennit_equals_captum,
    random_case,
)

ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh}


class _Projected(nn.Module):
    """``activation(conv(x))`` projected per position by a weight, with ``@`` or ``F.linear``."""

    def __init__(self, activation: str, written: str) -> None:
        super().__init__()
        self.activation, self.written = ACTIVATIONS[activation], written
        self.stem, self.weight = nn.Conv2d(3, 6, 3, padding=1), nn.Parameter(torch.empty(6, 4))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.activation(self.stem(x)).flatten(2).transpose(1, 2)  # (B, HW, 6)
        if self.written == "matmul":
            projected = h @ self.weight
        elif self.written == "einsum":
            projected = torch.einsum("btc,cd->btd", h, self.weight)
        else:
            projected = F.linear(h, self.weight.t())
        return self.head(projected.mean(1))


class _ModulatedAttention(nn.Module):
    """iFormer's single-head modulation attention: sigmoid values, a sigmoid gate after.

    ``v, gate = sigmoid(conv(x)).chunk(2)``; the values attended with ``softmax(q^T k)``,
    ``fused`` by ``scaled_dot_product_attention`` or written out with ``@`` as timm does.
    """

    def __init__(self, fused: bool) -> None:
        super().__init__()
        self.fused = fused
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.q, self.k = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)
        self.v_gate, self.proj, self.head = nn.Conv2d(8, 16, 1), nn.Conv2d(8, 8, 1), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        batch, _, height, width = x.shape
        v, gate = torch.sigmoid(self.v_gate(x)).chunk(2, dim=1)
        q, k, v = self.q(x).flatten(2), self.k(x).flatten(2), v.flatten(2)
        if self.fused:
            q, k, v = (t.transpose(-1, -2).unsqueeze(1) for t in (q, k, v))
            attended = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2)
        else:
            attention = ((q / math.sqrt(4)).transpose(-2, -1) @ k).softmax(dim=-1)
            attended = v @ attention.transpose(-2, -1)
        attended = attended.reshape(batch, -1, height, width)
        return self.head((x + self.proj(attended * gate)).mean((2, 3)))


class _ProductOfTwoSigmoids(nn.Module):
    """``sigmoid(a) @ sigmoid(b)^T`` (B, HW, HW) read as a signal: pooled by a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.sigmoid(self.a(x)).flatten(2).transpose(1, 2)
        b = torch.sigmoid(self.b(x)).flatten(2).transpose(1, 2)
        return self.head((a @ b.transpose(1, 2)).mean(1))


@pytest.mark.parametrize("written", ["matmul", "einsum"])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_a_sigmoid_times_a_weight_scores_as_a_linear_layer(activation, written):
    model, x, mask = random_case(lambda: _Projected(activation, written))
    linear, _, _ = random_case(lambda: _Projected(activation, "linear"))
    assert_exact_in_every_mode(model, x, mask, 1)
    assert_same_scores_in_every_mode(model, linear, x, mask, 1, rtol=1e-10, atol=1e-12)


def test_modulation_attention_written_out_scores_as_the_fused_one():
    model, x, mask = random_case(lambda: _ModulatedAttention(fused=False))
    fused, _, _ = random_case(lambda: _ModulatedAttention(fused=True))
    assert_exact_in_every_mode(model, x, mask, 1)
    assert_same_scores_in_every_mode(model, fused, x, mask, 1, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
def test_the_zennit_attributor_equals_the_captum_class(mode):
    model, x, mask = random_case(lambda: _ModulatedAttention(fused=False))
    assert_zennit_equals_captum(model, x, mask, 1, mode)


def test_a_product_of_two_sigmoids_read_as_a_signal_takes_the_uniform_rule():
    """The copies of ``a @ b^T``: ``(a_k @ b_0^T + a_0 @ b_k^T) / 2``, as the elementwise
    product of two sigmoids read as a signal takes them."""
    model, x, mask = random_case(_ProductOfTwoSigmoids)
    assert_exact_in_every_mode(model, x, mask, 1)
