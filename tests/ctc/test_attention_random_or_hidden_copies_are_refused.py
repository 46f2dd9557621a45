"""Attention and products that CTC cannot follow are refused by name, with the reason.

- ``F.scaled_dot_product_attention`` with ``dropout_p > 0`` (called as a function, which
  drops whatever the module's mode) and ``F.multi_head_attention_forward`` with ``training=True``
  and a dropout: random, refused with "attention dropout is random";
- an ``einsum`` whose output starts with an ellipsis while the signal's own subscripts name
  the batch first (``'b...c,cd->...bd'``): the ellipsis hides where the copies go.

Each is checked in every mode, and the model is left without hooks.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from .exactness import assert_refused

WIDTH, HEADS = 4, 2


class _Tokens(nn.Module):
    """The image's rows as tokens (N, 8, WIDTH), then ``attend``, then a linear head."""

    def __init__(self, attend) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(3 * 8, WIDTH)
        self.attention = nn.MultiheadAttention(WIDTH, HEADS, dropout=0.5)
        self.head = nn.Linear(WIDTH, 2)
        self.weight = nn.Parameter(torch.randn(WIDTH, WIDTH))
        self.attend = attend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.permute(0, 2, 1, 3).flatten(2))
        return self.head(self.attend(self, tokens).mean(1))


def _sdpa_dropout(model: _Tokens, h: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(h, h, h, dropout_p=0.2)


def _mha_dropout_in_training(model: _Tokens, h: torch.Tensor) -> torch.Tensor:
    attention, h = model.attention, h.transpose(0, 1)
    out, _ = F.multi_head_attention_forward(
        h, h, h, WIDTH, HEADS, attention.in_proj_weight, attention.in_proj_bias, None, None,
        False, 0.5, attention.out_proj.weight, attention.out_proj.bias, training=True,
    )  # fmt: skip
    return out.transpose(0, 1)


def _einsum_output_behind_an_ellipsis(model: _Tokens, h: torch.Tensor) -> torch.Tensor:
    return torch.einsum("b...c,cd->...bd", h, model.weight).movedim(-2, 0)


@pytest.mark.parametrize(
    ("attend", "message"),
    [
        (_sdpa_dropout, r"scaled_dot_product_attention.*attention dropout is random"),
        (_mha_dropout_in_training, r"multi_head_attention_forward.*attention dropout is random"),
        (
            _einsum_output_behind_an_ellipsis,
            r"einsum.*'b\.\.\.c,cd->\.\.\.bd' starts with an ellipsis",
        ),
    ],
    ids=["sdpa dropout", "mha dropout in training", "einsum output behind an ellipsis"],
)
def test_attention_ctc_cannot_follow_is_refused_by_name(attend, message: str) -> None:
    model = _Tokens(attend).double().eval()
    assert_refused(model, message, modes=("proportional", "reference", "none"))
