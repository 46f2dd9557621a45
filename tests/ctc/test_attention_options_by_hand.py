"""Attention's options (masks, causal, scale, key padding, returned weights) against plain torch.

CTC's ``"none"`` score of a feature is the gradient x input, summed over the feature, of the
network whose attention probabilities are held at the full input's values. Each model below
computes that network itself with ``linearised=True``: the probabilities written out from their
definition (``softmax(q k^T * scale + mask)``, causal rows, key padding as ``-inf``, the weights
``nn.MultiheadAttention`` returns averaged over heads or not) and detached. ``"proportional"``
scores add up to the model's logit, computed outside CTC.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctc_plugin.ctc.speedups import DEFAULT, SPEC

from .exactness import assert_none_is_gradient_x_input, assert_proportional_adds_up

TOKENS, WIDTH, HEADS = 5, 8, 2
SPEEDUPS = {"spec": SPEC, "default": DEFAULT}


def _probabilities(q, k, scale, mask=None, causal=False, padding=None):
    """The attention probabilities from their definition, detached (the full pass's gate)."""
    scores = q @ k.transpose(-2, -1) * scale
    if causal:
        later = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).triu(1)
        scores = scores.masked_fill(later, float("-inf"))
    if mask is not None:
        scores = (
            scores.masked_fill(~mask, float("-inf"))
            if mask.dtype == torch.bool
            else (scores + mask)
        )
    if padding is not None:  # (N, S), True = ignore that key
        scores = scores.masked_fill(padding[:, None, None, :], float("-inf"))
    return scores.softmax(-1).detach()


class _ScaledDotProduct(nn.Module):
    """Two heads of ``F.scaled_dot_product_attention`` over tokens (N, T, 3)."""

    def __init__(self, option: str) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.option = option
        self.embed = nn.Linear(3, WIDTH)
        self.q, self.k, self.v = (nn.Linear(WIDTH, WIDTH) for _ in range(3))
        self.head = nn.Linear(WIDTH, 3)
        generator = torch.Generator().manual_seed(6)
        keep = torch.rand(TOKENS, TOKENS, generator=generator) > 0.4
        keep |= torch.eye(TOKENS, dtype=torch.bool)  # every query sees some key
        self.register_buffer("bool_mask", keep)
        self.register_buffer("float_mask", torch.randn(TOKENS, TOKENS, generator=generator))

    def _arguments(self) -> dict:
        return {
            "plain": {},
            "bool mask": {"attn_mask": self.bool_mask},
            "float mask": {"attn_mask": self.float_mask},
            "causal": {"is_causal": True},
            "scale": {"scale": 0.9},
        }[self.option]

    def forward(self, x: torch.Tensor, linearised: bool = False) -> torch.Tensor:
        h = self.embed(x)
        q, k, v = (
            f(h).unflatten(-1, (HEADS, -1)).transpose(1, 2) for f in (self.q, self.k, self.v)
        )
        arguments = self._arguments()
        if linearised:
            scale = arguments.get("scale", 1.0 / math.sqrt(q.shape[-1]))
            p = _probabilities(
                q, k, scale, arguments.get("attn_mask"), arguments.get("is_causal", False)
            )
            attended = p @ v
        else:
            attended = F.scaled_dot_product_attention(q, k, v, **arguments)
        return self.head(attended.transpose(1, 2).flatten(2).mean(1))


class _MultiHead(nn.Module):
    """``nn.MultiheadAttention`` with key padding, whose returned weights also mix the tokens."""

    def __init__(self, average: bool) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.average = average
        self.embed = nn.Linear(3, WIDTH)
        self.attention = nn.MultiheadAttention(WIDTH, HEADS, batch_first=True)
        self.head = nn.Linear(WIDTH, 3)
        padding = torch.zeros(2, TOKENS, dtype=torch.bool)
        padding[0, -1] = True  # the examples ignore different keys
        padding[1, :2] = True
        self.register_buffer("padding", padding)

    def forward(self, x: torch.Tensor, linearised: bool = False) -> torch.Tensor:
        h = self.embed(x)
        if linearised:
            w_q, w_k, w_v = self.attention.in_proj_weight.chunk(3)
            b_q, b_k, b_v = self.attention.in_proj_bias.chunk(3)
            q, k, v = (
                F.linear(h, w, b).unflatten(-1, (HEADS, -1)).transpose(1, 2)
                for w, b in ((w_q, b_q), (w_k, b_k), (w_v, b_v))
            )
            p = _probabilities(q, k, 1.0 / math.sqrt(q.shape[-1]), padding=self.padding)
            out = self.attention.out_proj((p @ v).transpose(1, 2).flatten(2))
            weights = p.mean(1) if self.average else p
        else:
            out, weights = self.attention(
                h,
                h,
                h,
                key_padding_mask=self.padding,
                need_weights=True,
                average_attn_weights=self.average,
            )
        mixed = weights @ h if self.average else (weights @ h.unsqueeze(1)).mean(1)
        return self.head((out + mixed).mean(1))


def _case(model: nn.Module):
    model = model.double().eval()
    x = torch.randn(2, TOKENS, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    mask = torch.tensor([0, 0, 1, 2, 2]).view(1, TOKENS, 1).expand(1, TOKENS, 3)
    return model, x, mask


MODELS = {
    **{f"sdpa {o}": (_ScaledDotProduct, o) for o in ("plain", "bool mask", "float mask")},
    **{f"sdpa {o}": (_ScaledDotProduct, o) for o in ("causal", "scale")},
    "mha averaged weights": (_MultiHead, True),
    "mha weights per head": (_MultiHead, False),
}


@pytest.mark.parametrize("speedups", SPEEDUPS.values(), ids=SPEEDUPS.keys())
@pytest.mark.parametrize("name", MODELS)
def test_none_scores_are_the_linearised_attentions_gradient_times_input(name, speedups):
    builder, option = MODELS[name]
    model, x, mask = _case(builder(option))
    linearised = partial(model, linearised=True)  # checked to be the same network
    tolerance = {"same_output": {}, "rtol": 1e-10, "atol": 1e-12}
    assert_none_is_gradient_x_input(
        model, x, mask, [0, 2], linearised, speedups=(speedups,), **tolerance
    )


@pytest.mark.parametrize("name", MODELS)
def test_proportional_scores_add_up_to_the_logit(name):
    builder, option = MODELS[name]
    model, x, mask = _case(builder(option))
    assert_proportional_adds_up(model, x, mask, [0, 2], rtol=1e-10, atol=1e-10)
