"""Operations without a CTC rule on attention scores alone are computed as they are.

Attention scores ``q @ k^T`` are gate-only: every copy holds the full image's scores. A causal
mask written with ``masked_fill`` or ``torch.where`` (nanoGPT's attention), a softmax written
out (``exp``, ``amax``), a clamp of the logits and ``softmax(...).type_as(q)`` (LLaMA's
attention) are functions of those scores alone, so every copy gets the full image's result,
also when the operation writes in place (``masked_fill_``) or mixes the examples of the batch
along dim 0 (``cumsum(0)``: computed over the model's batch, not over the copies).
``"proportional"`` scores add up to the logit and ``"none"`` is gradient x input of the network
with its attention probabilities held fixed. The same operations on the signal stay refused.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from .exactness import (
    OperationAfterConv,
    assert_none_is_gradient_x_input,
    assert_proportional_adds_up,
    assert_refused,
    assert_zennit_equals_captum,
    held_fixed,
    random_case,
)

WIDTH, HEADS, TOKENS = 8, 2, 16
VARIANTS = [
    "masked_fill",
    "masked_fill_ in place",
    "where",
    "softmax written out",
    "clamped logits",
    "softmax type_as",
    "probabilities mixed over the batch",
    "probabilities masked in place",
    "inverted mask",
    "sizes checked",
    "diagonal written in place",
    "fill with a row per copy",
]


class CausalAttention(nn.Module):
    """Patch tokens through one attention layer whose probabilities ``variant`` computes."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        self.variant = variant
        self.patch = nn.Conv2d(3, WIDTH, 2, stride=2)
        self.qkv, self.out = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)
        self.head = nn.Linear(WIDTH, 4)
        self.register_buffer("causal", torch.tril(torch.ones(TOKENS, TOKENS)).view(1, 1, 16, 16))
        self.frozen = False  # hold the probabilities fixed: the linearised network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        b, n, c = t.shape
        q, k, v = (u.view(b, n, HEADS, c // HEADS).transpose(1, 2) for u in self.qkv(t).split(c, 2))
        a = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        if self.variant == "masked_fill":
            a = F.softmax(a.masked_fill(self.causal == 0, float("-inf")), dim=-1)
        elif self.variant == "masked_fill_ in place":
            a.masked_fill_(self.causal == 0, float("-inf"))
            a = a.softmax(-1)
        elif self.variant == "where":
            a = torch.where(self.causal == 0, float("-inf"), a).softmax(-1)
        elif self.variant == "softmax written out":
            a = (a - a.amax(-1, keepdim=True)).exp()
            a = a / a.sum(-1, keepdim=True)
        elif self.variant == "clamped logits":
            a = a.clamp(-5.0, 5.0).softmax(-1)
        elif self.variant == "softmax type_as":
            a = F.softmax(a.float(), dim=-1).type_as(q)
        elif self.variant == "probabilities masked in place":  # written into softmax's output
            a = a.softmax(-1)
            a.masked_fill_(self.causal == 0, 0.0)
            a = a / a.sum(-1, keepdim=True)
        elif self.variant == "probabilities mixed over the batch":  # example i: mean of 0..i
            a = a.softmax(-1).cumsum(0)
            a = a / a.sum(-1, keepdim=True)
        elif self.variant == "inverted mask":  # ~keep must leave keep as it is
            keep = a > a.mean(-1, keepdim=True)
            drop = ~keep
            a = a.masked_fill(drop, -1e9).softmax(-1) + a.masked_fill(keep, -1e9).softmax(-1)
        elif self.variant == "sizes checked":  # transformers' attention checks its sizes
            if a.size() != (b, HEADS, n, n):
                raise ValueError(f"attention scores of size {a.size()}")
            a = a.reshape(a.shape[0], HEADS, n, n).softmax(-1)
        elif self.variant == "diagonal written in place":  # locality self-attention
            a.diagonal(dim1=-2, dim2=-1).fill_(-1e9)
            a = a.softmax(-1)
        elif self.variant == "fill with a row per copy":  # b is the pass's batch
            fill = torch.full((b, HEADS, n, n), -1e9, dtype=a.dtype)
            a = torch.where(self.causal == 0, fill, a).softmax(-1)
        if self.frozen:
            a = a.detach()
        y = (a @ v).transpose(1, 2).reshape(b, n, c)
        return self.head(self.out(y).mean(1))


def _case(variant: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return random_case(lambda: CausalAttention(variant), first_id=1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_proportional_scores_add_up_to_the_logit(variant: str) -> None:
    model, x, mask = _case(variant)
    assert_proportional_adds_up(model, x, mask, 1, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_image_alone_adds_up_to_its_logit(variant: str) -> None:
    """One image: the full pass's probabilities are given to every copy in memory of their own."""
    model, x, mask = _case(variant)
    assert_proportional_adds_up(model, x[:1], mask, 1, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
def test_none_is_gradient_x_input_with_the_probabilities_held_fixed(variant: str) -> None:
    model, x, mask = _case(variant)
    assert_none_is_gradient_x_input(model, x, mask, 1, held_fixed(model), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
def test_the_zennit_attributor_equals_the_captum_class(mode: str) -> None:
    model, x, mask = _case("masked_fill")
    assert_zennit_equals_captum(model, x, mask, 1, mode)


class _GateOnlyInto(nn.Module):
    """Attention scores written into ``out=`` or read with the copies moved off dim 0."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.patch, self.head = nn.Conv2d(3, WIDTH, 2, stride=2), nn.Linear(WIDTH, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        a = t @ t.transpose(1, 2) / WIDTH
        if self.how == "out":
            a = torch.exp(a, out=torch.empty_like(a))
        else:  # the copies along dim 1
            a = a.transpose(0, 1).exp().transpose(0, 1)
        return self.head((a.softmax(-1) @ t).mean(1))


@pytest.mark.parametrize(
    "how, message",
    [
        ("out", r"torch\.exp .*writes its result into out=.*without out="),
        ("moved", r"torch\.Tensor\.exp .*copies along dim 1"),
    ],
)
def test_gate_only_scores_into_out_or_off_dim_zero_are_refused(how: str, message: str) -> None:
    model = _GateOnlyInto(how).double().eval()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    rows = torch.arange(8) // 4
    mask = (rows.view(1, 1, -1, 1) * 2 + rows.view(1, 1, 1, -1)).expand(1, 1, 8, 8)
    assert_refused(model, message, x=x, mask=mask, modes=("proportional", "none"))


@pytest.mark.parametrize(
    "operation, name",
    [
        (lambda s: s.sinh(), "sinh"),  # clamp of the signal is a gate (hardtanh) now
        (lambda s: s.exp(), "exp"),
    ],
)
def test_the_same_operations_on_the_signal_stay_refused(operation, name: str) -> None:
    model = OperationAfterConv(operation, 4).double().eval()
    assert_refused(model, rf"torch\.Tensor\.{name} .*no CTC rule")
