"""A CNN that computes attention inside its stages is explained by its convolutional stages.

BoTNet, HaloNet and LambdaNet put self-attention in place of a ResNet bottleneck's 3 x 3
convolution, a BatchNorm right after it; NextViT and EfficientViT (MSRA) feed their attention's
output to convolutions. Every attention's output reaches a convolutional stage there, which
shows what it did, and Integrative CAM was refusing these models ("computes attention, but none
of its modules is a transformer block IntegrativeCAM knows"). It still refuses a model whose
attention's output reaches no stage (a transformer head over a CNN's map, attention stages
after the last convolution), whose convolutional stages alone would be a partial map.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctc_plugin import IntegrativeCAM
from ctc_plugin.cam import UnknownBlocksError


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the positions of an (N, C, H, W) map (BoTNet's MHSA)."""

    def __init__(self, channels: int, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(x).view(n, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.mT, k.mT, v.mT)  # (N, heads, HW, d)
        return out.mT.reshape(n, c, h, w)


class Bottleneck(nn.Module):
    """1 x 1 convolution, attention (in place of a 3 x 3 convolution), BatchNorm, ReLU, 1 x 1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(channels, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.attention = SelfAttention2d(8)
        self.after = nn.Sequential(nn.BatchNorm2d(8), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(8, channels, 1), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.expand(self.after(self.attention(self.reduce(x)))))


class BotNet(nn.Module):
    """A convolutional stem and two bottlenecks with attention (BoTNet's last stage)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(Bottleneck(16), Bottleneck(16))
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class AttentionThenConvolution(nn.Module):
    """NextViT's order: attention on the map's tokens added to it, then a convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, 4)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.stem(x)
        tokens = grid.flatten(2).mT
        mixed = grid + self.attention(tokens, tokens, tokens)[0].mT.reshape(grid.shape)
        return self.head(F.relu(self.conv(mixed)).mean((2, 3)))


class AttentionAfterTheConvolutions(AttentionThenConvolution):
    """The same, with a second attention after the last convolution (CAFormer's last stage)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = F.relu(self.conv(self.stem(x))).flatten(2).mT
        tokens = tokens + self.attention(tokens, tokens, tokens)[0]
        return self.head(tokens.mean(1))


def _ready(model: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (
            BotNet,
            [
                "stem.0",
                "blocks.0.reduce.0",
                "blocks.0.attention.qkv",
                "blocks.0.after.0",
                "blocks.0.expand.0",
            ],
        ),
        (AttentionThenConvolution, ["stem", "conv"]),
    ],
    ids=["attention in place of a convolution", "a convolution after the attention"],
)
def test_its_stages_are_its_convolutions_and_a_batchnorm_after_the_attention(
    make, expected
) -> None:
    torch.manual_seed(0)
    model = _ready(make())
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    maps, layers = IntegrativeCAM(model).attribute(x, target=1, return_layer_maps=True)
    assert layers.names[: len(expected)] == expected
    assert maps.shape == (2, 1, 16, 16) and maps.amax(dim=(1, 2, 3)).min() > 0.5


def test_attention_whose_output_reaches_no_stage_is_still_refused() -> None:
    """Its convolutional stages would leave the attention after them out of the map."""
    torch.manual_seed(0)
    model = _ready(AttentionAfterTheConvolutions())
    with pytest.raises(
        UnknownBlocksError, match=r"attention reaches no convolutional stage \(1 of 1 call;"
    ):
        IntegrativeCAM(model).attribute(torch.rand(1, 3, 16, 16), target=1)
