"""``scaled_dot_product_attention(..., enable_gqa=True)``: grouped-query attention.

It was refused; its keys and values are repeated to the query's heads, as torch repeats them,
and the scores equal those of the same attention with the heads repeated by hand.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.testing import random_partition


class GroupedQueryViT(nn.Module):
    """Patch tokens, one grouped-query attention layer (4 query heads, 2 key/value heads)."""

    def __init__(self, by_hand: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(3, 16, 4, 4)
        self.query, self.key, self.value = nn.Linear(16, 16), nn.Linear(16, 8), nn.Linear(16, 8)
        self.head, self.by_hand = nn.Linear(16, 3), by_hand

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (N, T, 16)
        n, t, _ = tokens.shape
        q = self.query(tokens).view(n, t, 4, 4).transpose(1, 2)
        k, v = (f(tokens).view(n, t, 2, 4).transpose(1, 2) for f in (self.key, self.value))
        if self.by_hand:
            k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        return self.head((tokens + out.transpose(1, 2).reshape(n, t, 16)).mean(1))


@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
def test_scores_equal_those_of_heads_repeated_by_hand(mode):
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mask = random_partition(16, 16, 5)
    grouped = GroupedQueryViT(by_hand=False).double().eval()
    by_hand = GroupedQueryViT(by_hand=True).double().eval()
    with torch.no_grad():
        torch.testing.assert_close(grouped(x), by_hand(x))
    expected = CTC(by_hand, bias_sharing=mode).attribute(x, 1, feature_mask=mask)
    got = CTC(grouped, bias_sharing=mode).attribute(x, 1, feature_mask=mask)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
