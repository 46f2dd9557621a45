"""``nn.MultiheadAttention`` with an attention mask and a key padding mask together, and with
separate query, key and value projections, against the network written out by hand; and
``F.multi_head_attention_forward`` called with boolean masks (the module makes them float
before it calls the function; a direct call passes them as they are).

``multi_head_attention`` decomposes the torch function into ``F.linear`` and
``scaled_dot_product_attention``: the two masks must add up (a position masked by either is
ignored), and with ``kdim``/``vdim`` the module's ``q_proj_weight``, ``k_proj_weight`` and
``v_proj_weight`` project the query, the key and the value each (the packed ``in_proj_bias``
still holds their biases in that order). The reference below writes the attention from its
definition with the probabilities detached (the full pass's gate): ``"none"`` scores are its
gradient x input, and ``"proportional"`` scores add up to the logit.
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

TOKENS, WIDTH, HEADS, KEYS = 5, 8, 2, 6


class _CrossAttention(nn.Module):
    """Queries from one embedding, keys and values from two others (``KEYS`` wide with
    ``separate``), with an attention mask and a key padding mask of the kind ``masks`` names;
    through the module, or with ``functional`` through ``F.multi_head_attention_forward``."""

    def __init__(self, separate: bool, masks: str, functional: bool = False) -> None:
        super().__init__()
        torch.manual_seed(11)
        width = KEYS if separate else WIDTH
        self.separate, self.masks, self.functional = separate, masks, functional
        self.to_query = nn.Linear(3, WIDTH)
        self.to_key, self.to_value = nn.Linear(3, width), nn.Linear(3, width)
        options = {"kdim": KEYS, "vdim": KEYS} if separate else {}
        self.attention = nn.MultiheadAttention(WIDTH, HEADS, batch_first=True, **options)
        with torch.no_grad():  # distinct biases, so that swapping them shows
            self.attention.in_proj_bias.copy_(torch.randn(3 * WIDTH))
        self.head = nn.Linear(WIDTH, 3)
        generator = torch.Generator().manual_seed(12)
        keep = torch.rand(TOKENS, TOKENS, generator=generator) > 0.3
        keep |= torch.eye(TOKENS, dtype=torch.bool)  # every query keeps some key
        padding = torch.zeros(2, TOKENS, dtype=torch.bool)
        padding[0, -1], padding[1, 0] = True, True  # never a query's own (diagonal) key
        keep[-1, :-1] = True  # the queries whose own key is padded keep others
        keep[0, 1:] = True
        self.register_buffer("keep", keep)
        self.register_buffer("padding", padding)
        self.register_buffer("float_mask", torch.randn(TOKENS, TOKENS, generator=generator))

    def _masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(attn_mask, key_padding_mask)`` as the module takes them."""
        if self.masks == "bool":
            return ~self.keep, self.padding  # True: not allowed to attend
        padding = torch.zeros(self.padding.shape, dtype=self.float_mask.dtype)
        return self.float_mask, padding.masked_fill(self.padding, float("-inf"))

    def _additive(self) -> torch.Tensor:
        """Both masks as one additive (N, 1, L, S) mask, from their definition."""
        mask, padding = self._masks()
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=self.float_mask.dtype).masked_fill(mask, -math.inf)
            padding = torch.zeros(padding.shape, dtype=mask.dtype).masked_fill(padding, -math.inf)
        return mask + padding[:, None, None, :]

    def _by_hand(self, query, key, value) -> tuple[torch.Tensor, torch.Tensor]:
        attention = self.attention
        if self.separate:
            weights = attention.q_proj_weight, attention.k_proj_weight, attention.v_proj_weight
        else:
            weights = attention.in_proj_weight.chunk(3)
        q, k, v = (
            F.linear(x, w, b).unflatten(-1, (HEADS, -1)).transpose(1, 2)
            for x, w, b in zip((query, key, value), weights, attention.in_proj_bias.chunk(3))
        )
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + self._additive()
        p = scores.softmax(-1).detach()
        return attention.out_proj((p @ v).transpose(1, 2).flatten(2)), p.mean(1)

    def _functional(self, query, key, value) -> tuple[torch.Tensor, torch.Tensor]:
        """``F.multi_head_attention_forward`` (sequence first) with the masks as they are."""
        attention, (mask, padding) = self.attention, self._masks()
        separate = {}
        if self.separate:
            separate = {
                "use_separate_proj_weight": True, "q_proj_weight": attention.q_proj_weight,
                "k_proj_weight": attention.k_proj_weight, "v_proj_weight": attention.v_proj_weight,
            }  # fmt: skip
        out, weights = F.multi_head_attention_forward(
            query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1), WIDTH, HEADS,
            attention.in_proj_weight, attention.in_proj_bias, None, None, False, 0.0,
            attention.out_proj.weight, attention.out_proj.bias, training=False,
            key_padding_mask=padding, attn_mask=mask, **separate,
        )  # fmt: skip
        return out.transpose(0, 1), weights

    def forward(self, x: torch.Tensor, linearised: bool = False) -> torch.Tensor:
        query, key, value = self.to_query(x), self.to_key(x), self.to_value(x)
        if linearised:
            out, weights = self._by_hand(query, key, value)
        elif self.functional:
            out, weights = self._functional(query, key, value)
        else:
            mask, padding = self._masks()
            out, weights = self.attention(
                query, key, value, attn_mask=mask, key_padding_mask=padding
            )
        return self.head((out + weights @ query).mean(1))


CASES = {
    f"{'separate' if separate else 'packed'} projections, {masks} masks": (separate, masks)
    for separate in (False, True)
    for masks in ("bool", "float")
}
CASES["the function with bool masks"] = (False, "bool", True)
CASES["the function with bool masks, separate projections"] = (True, "bool", True)


def _case(separate: bool, masks: str, functional: bool = False):
    model = _CrossAttention(separate, masks, functional).double().eval()
    x = torch.randn(2, TOKENS, 3, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    mask = torch.tensor([0, 0, 1, 2, 2]).view(1, TOKENS, 1).expand(1, TOKENS, 3)
    return model, x, mask


@pytest.mark.parametrize("speedups", [SPEC, DEFAULT], ids=["spec", "default"])
@pytest.mark.parametrize("name", CASES)
def test_none_scores_are_the_hand_written_attentions_gradient_times_input(name, speedups):
    model, x, mask = _case(*CASES[name])
    assert_none_is_gradient_x_input(
        model, x, mask, [0, 2], partial(model, linearised=True), speedups=(speedups,),
        same_output={}, rtol=1e-10, atol=1e-12,
    )  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_proportional_scores_add_up_to_the_logit(name):
    model, x, mask = _case(*CASES[name])
    assert_proportional_adds_up(model, x, mask, [0, 2], rtol=1e-10, atol=1e-10)
