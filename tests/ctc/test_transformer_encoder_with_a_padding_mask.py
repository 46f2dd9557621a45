"""PyTorch's ``nn.TransformerEncoder`` with ``src_key_padding_mask`` (its defaults).

Before it looks for a torch function mode, the encoder asks whether the padding mask is
left-aligned (``torch._nested_tensor_from_mask_left_aligned``, its nested-tensor fast path),
of the whole batch of copies against the model's mask: torch's "Mask size should match input
size" ended the call. The question is answered for the model's own batch.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.testing import random_partition


class EncoderViT(nn.Module):
    def __init__(self, mask_check: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(3, 16, 8, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.pos = nn.Parameter(torch.randn(1, 17, 16))
        layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)  # enable_nested_tensor=True
        self.encoder.mask_check = mask_check
        self.head = nn.Linear(16, 5)
        padding = torch.zeros(2, 17, dtype=torch.bool)
        padding[:, -3:] = True  # the last three tokens are padding
        self.register_buffer("padding", padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], 1) + self.pos
        encoded = self.encoder(tokens, src_key_padding_mask=self.padding[: tokens.shape[0]])
        return self.head(encoded[:, 0])


@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
def test_scores_equal_those_without_the_mask_check(mode):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mask = random_partition(32, 32, 6)
    model = EncoderViT().eval()
    unchecked = EncoderViT(mask_check=False).eval()
    attribution, scores = CTC(model, bias_sharing=mode).attribute(
        x, 1, feature_mask=mask, return_feature_scores=True
    )
    expected = CTC(unchecked, bias_sharing=mode).attribute(x, 1, feature_mask=mask)
    torch.testing.assert_close(attribution, expected, rtol=0, atol=0)
    if mode == "proportional":
        with torch.no_grad():
            torch.testing.assert_close(scores.scores.sum(1), model(x)[:, 1], rtol=1e-5, atol=1e-5)
