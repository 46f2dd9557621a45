"""Integrative CAM on a ViT whose later block holds fewer tokens (token pruning): the refusal
says the tokens were dropped and how to leave those blocks out, and that advice works."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import IntegrativeCAM
from ctc_plugin.cam import PatchTokens


class PrunedViT(nn.Module):
    """Two encoder layers; between them only the 8 patch tokens closest to the class token stay."""

    num_prefix_tokens = 1

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, width, 8, 8)
        self.cls_token = nn.Parameter(torch.randn(1, 1, width))
        self.blocks = nn.Sequential(
            *[
                nn.TransformerEncoderLayer(width, 2, 32, dropout=0.0, batch_first=True)
                for _ in range(2)
            ]
        )
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = self.blocks[0](torch.cat([self.cls_token.expand(len(x), -1, -1), patches], 1))
        cls, patches = tokens[:, :1], tokens[:, 1:]
        kept = (patches @ cls.transpose(1, 2)).squeeze(-1).topk(8, dim=1).indices
        patches = torch.gather(patches, 1, kept.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        return self.head(self.blocks[1](torch.cat([cls, patches], 1))[:, 0])


def test_a_block_after_token_pruning_is_refused_with_advice_that_works():
    """It said to let Integrative CAM read the grid from the patch embedding: it was
    Integrative CAM, and the 8 tokens have no grid."""
    torch.manual_seed(0)
    model = PrunedViT().eval()
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="tokens were dropped on the way") as refused:
        IntegrativeCAM(model).attribute(x, target=1)
    assert "PatchTokens(prefix=1)" in str(refused.value)
    maps = IntegrativeCAM(
        model, layers=[model.blocks[0]], reshape_transform=PatchTokens(prefix=1)
    ).attribute(x, target=1)
    assert maps.shape == (1, 1, 32, 32)
