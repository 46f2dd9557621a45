"""A product of the signal with a tensor taken out of torch and back is refused.

Tokens taken through numpy are a constant to the pass, but one whose rows differ between the
copies of an example: multiplied with the signal (``matmul``, ``einsum``, or as the query and key
of ``scaled_dot_product_attention`` whose value is the signal) they would give every copy a value
no rule accounts for. The product rules check such constants and refuse them, naming numpy.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.ctc.errors import UntracedOutputError


def _matmul(tokens: torch.Tensor, untraced: torch.Tensor) -> torch.Tensor:
    return tokens @ untraced.transpose(1, 2) @ tokens


def _einsum(tokens: torch.Tensor, untraced: torch.Tensor) -> torch.Tensor:
    return torch.einsum("btc,bsc->bts", untraced, tokens) @ untraced


def _attention(tokens: torch.Tensor, untraced: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(untraced, untraced, tokens)


class _Untraced(nn.Module):
    """The image's rows as tokens, a copy of them through numpy, and ``product`` of the two."""

    def __init__(self, product) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.head, self.product = nn.Linear(3 * 8, 4), nn.Linear(4, 2), product

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.permute(0, 2, 1, 3).flatten(2))
        untraced = torch.from_numpy(tokens.detach().numpy().copy())
        return self.head(self.product(tokens, untraced).mean(1))


@pytest.mark.parametrize("product", [_matmul, _einsum, _attention], ids=lambda f: f.__name__)
def test_a_product_with_tokens_taken_through_numpy_is_refused(product) -> None:
    model = _Untraced(product).double().eval()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(8) // 4).view(1, 1, 8, 1) * 2 + (torch.arange(8) // 4).view(1, 1, 1, 8)
    for mode in ("proportional", "none"):
        with pytest.raises(UntracedOutputError, match="numpy"):
            CTC(model, bias_sharing=mode).attribute(x, 0, feature_mask=mask)
