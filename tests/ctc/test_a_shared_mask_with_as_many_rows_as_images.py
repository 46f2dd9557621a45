"""A tensor shared by every image in ``additional_forward_args`` that has as many rows as there
are images (an attention mask over as many tokens) is repeated per copy, as Captum repeats its
extra arguments; the refusal that follows says so and what to do."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.ctc.errors import UntracedOutputError


class TinyViT(nn.Module):
    """A patch embedding, a class token and one attention layer taking an attention mask."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, width, 8, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, width))
        self.attention = nn.MultiheadAttention(width, 2, batch_first=True)
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        patches = self.patches(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), patches], 1)  # 5 tokens
        mixed = self.attention(tokens, tokens, tokens, attn_mask=attn_mask, need_weights=False)
        return self.head(mixed[0][:, 0])


def test_a_mask_of_as_many_tokens_as_images_gets_the_note_on_repeated_arguments():
    """With five images and five tokens the (5, 5) mask was repeated per copy and CTC said the
    attention read a tensor 'taken out of torch and back', which it was not."""
    torch.manual_seed(0)
    model = TinyViT().eval()
    mask = torch.zeros(5, 5, dtype=torch.bool)
    mask[:, 2] = True
    segments = torch.arange(4).view(1, 1, 2, 2).repeat_interleave(8, 2).repeat_interleave(8, 3)
    CTC(model).attribute(
        torch.rand(4, 3, 16, 16), 1, feature_mask=segments, additional_forward_args=(mask,)
    )
    with pytest.raises(UntracedOutputError, match=r"give it a first dimension of 1 \(w\[None\]\)"):
        CTC(model).attribute(
            torch.rand(5, 3, 16, 16), 1, feature_mask=segments, additional_forward_args=(mask,)
        )
