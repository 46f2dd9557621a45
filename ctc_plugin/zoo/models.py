"""Small classifiers in the style of the four families the CTC paper evaluates, and a modern one.

Every model normalises its input itself (``(x - mean) / std`` with registered buffers), so it takes
[`ShapesDataset`][ctc_plugin.datasets.ShapesDataset] images as they are, and returns logits. The
four paper families use only Conv2d, Linear, BatchNorm2d, ReLU, MaxPool2d, AvgPool2d,
AdaptiveAvgPool2d, Flatten, Dropout, residual additions and ``torch.cat``. The fifth,
[`SmallEfficientNet`][ctc_plugin.zoo.models.SmallEfficientNet], is built from the parts of the last
five years' CNNs: squeeze-excitation, LayerNorm, SiLU and GELU, layer scale and stochastic depth.
The sixth, [`SmallViT`][ctc_plugin.zoo.models.SmallViT], is a vision transformer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ctc_plugin.cam.reshapes import tokens_to_grid
from ctc_plugin.images import Normalize


def conv_bn(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """Return Conv2d (no bias) -> BatchNorm2d -> ReLU, padded to keep the size at stride 1."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _head(channels: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(channels, num_classes)
    )


class SmallVGG(nn.Module):
    """VGG-BN style: stacks of 3x3 conv / BatchNorm / ReLU with max-pooling, then an MLP head.

    Args:
        num_classes: Number of output logits.
    """

    def __init__(self, num_classes: int):
        super().__init__()
        self.normalize = Normalize()
        self.features = nn.Sequential(
            conv_bn(3, 16),
            nn.MaxPool2d(2),
            conv_bn(16, 32),
            nn.MaxPool2d(2),
            conv_bn(32, 48),
            conv_bn(48, 48),
            nn.MaxPool2d(2),
            conv_bn(48, 96),
            conv_bn(96, 96),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(96, 64),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of a batch of images in [0, 1]."""
        return self.classifier(self.features(self.normalize(x)))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv/BN, a residual addition, a final ReLU.

    Args:
        c_in: Input channels.
        c_out: Output channels.
        stride: Stride of the first convolution (and of the 1x1 projection shortcut).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class SmallResNet(nn.Module):
    """ResNet style: a conv stem with max-pooling, four stages of basic blocks, average pooling.

    Args:
        num_classes: Number of output logits.
    """

    def __init__(self, num_classes: int):
        super().__init__()
        self.normalize = Normalize()
        self.stem = nn.Sequential(conv_bn(3, 16), nn.MaxPool2d(2))
        self.layer1 = BasicBlock(16, 16)
        self.layer2 = BasicBlock(16, 32, stride=2)
        self.layer3 = BasicBlock(32, 64, stride=2)
        self.layer4 = BasicBlock(64, 128, stride=2)
        self.head = _head(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of a batch of images in [0, 1]."""
        x = self.stem(self.normalize(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.head(x)


class DenseLayer(nn.Module):
    """DenseNet layer: BN -> ReLU -> 3x3 conv, output concatenated to its input.

    Args:
        c_in: Input channels.
        growth: Channels the layer adds.
    """

    def __init__(self, c_in: int, growth: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(c_in)
        self.conv = nn.Conv2d(c_in, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``cat([x, conv(relu(norm(x)))])``."""
        return torch.cat([x, self.conv(F.relu(self.norm(x)))], dim=1)


def _transition(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm2d(c_in),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.AvgPool2d(2),
    )


class SmallDenseNet(nn.Module):
    """DenseNet style: dense blocks (concatenation, BatchNorm) joined by transition layers.

    Args:
        num_classes: Number of output logits.
        growth: Channels each dense layer adds.
    """

    def __init__(self, num_classes: int, growth: int = 12):
        super().__init__()
        self.normalize = Normalize()
        self.stem = nn.Sequential(conv_bn(3, 16), nn.MaxPool2d(2), conv_bn(16, 24), nn.MaxPool2d(2))
        layers: list[nn.Module] = []
        channels = 24
        for block, n_layers in enumerate((4, 4, 4)):
            for _ in range(n_layers):
                layers.append(DenseLayer(channels, growth))
                channels += growth
            if block < 2:
                layers.append(_transition(channels, channels // 2))
                channels //= 2
        layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = _head(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of a batch of images in [0, 1]."""
        return self.head(self.features(self.stem(self.normalize(x))))


class InceptionModule(nn.Module):
    """Inception module: 1x1, 1x1->3x3, 1x1->3x3->3x3 and pool->1x1 branches, concatenated.

    Args:
        c_in: Input channels.
        width: Output channels of each branch (the module outputs ``4 * width``).
    """

    def __init__(self, c_in: int, width: int):
        super().__init__()
        self.branch1 = conv_bn(c_in, width, 1)
        self.branch3 = nn.Sequential(conv_bn(c_in, width, 1), conv_bn(width, width))
        self.branch5 = nn.Sequential(
            conv_bn(c_in, width, 1), conv_bn(width, width), conv_bn(width, width)
        )
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(c_in, width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the concatenated branch outputs."""
        branches = (self.branch1, self.branch3, self.branch5, self.branch_pool)
        return torch.cat([branch(x) for branch in branches], dim=1)


class SmallInception(nn.Module):
    """Inception style: a conv stem, then inception modules separated by max-pooling.

    Args:
        num_classes: Number of output logits.
    """

    def __init__(self, num_classes: int):
        super().__init__()
        self.normalize = Normalize()
        self.stem = nn.Sequential(conv_bn(3, 16), nn.MaxPool2d(2), conv_bn(16, 32), nn.MaxPool2d(2))
        self.mixed1 = InceptionModule(32, 16)
        self.pool = nn.MaxPool2d(2)
        self.mixed2 = InceptionModule(64, 24)
        self.pool2 = nn.MaxPool2d(2)
        self.mixed3 = InceptionModule(96, 32)
        self.head = _head(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of a batch of images in [0, 1]."""
        x = self.mixed1(self.stem(self.normalize(x)))
        x = self.mixed3(self.pool2(self.mixed2(self.pool(x))))
        return self.head(x)


class MBConv(nn.Module):
    """EfficientNet's inverted residual block with squeeze-excitation.

    1x1 expansion, depthwise 3x3 (carrying the stride), squeeze-excitation (torchvision's
    `SqueezeExcitation`: SiLU inside, a sigmoid gate), 1x1 projection.
    Each convolution is followed by a BatchNorm; the first two by SiLU. When the block keeps
    its size, its branch is scaled per channel (layer scale, as in ConvNeXt), passed through
    stochastic depth and added to its input.

    Args:
        c_in: Input channels.
        c_out: Output channels.
        stride: Stride of the depthwise convolution.
        expansion: Channel factor of the inverted bottleneck.
        drop: Stochastic depth probability (training only).
    """

    def __init__(
        self, c_in: int, c_out: int, stride: int = 1, expansion: int = 4, drop: float = 0.05
    ):
        super().__init__()
        from torchvision.ops import SqueezeExcitation, StochasticDepth

        hidden = c_in * expansion
        self.block = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.SiLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.SiLU(inplace=True),
            SqueezeExcitation(hidden, max(4, c_in // 4), activation=nn.SiLU),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.residual = stride == 1 and c_in == c_out
        self.layer_scale = nn.Parameter(torch.full((c_out, 1, 1), 0.5)) if self.residual else None
        self.drop_path = StochasticDepth(drop, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        out = self.block(x)
        if self.layer_scale is None:
            return out
        return x + self.drop_path(self.layer_scale * out)


class SmallEfficientNet(nn.Module):
    """EfficientNet / ConvNeXt style: MBConv blocks with squeeze-excitation, a LayerNorm end.

    A stride-2 stem (conv, BatchNorm, SiLU), seven [`MBConv`][ctc_plugin.zoo.models.MBConv] blocks
    in four stages (16, 24, 40, 80 channels, each stage but the first halving the size), a 1x1
    convolution to 128 channels with ConvNeXt's channels-last LayerNorm and GELU, then global
    average pooling and a linear classifier.

    Args:
        num_classes: Number of output logits.
    """

    def __init__(self, num_classes: int):
        super().__init__()
        from torchvision.models.convnext import LayerNorm2d

        self.normalize = Normalize()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False),
            nn.BatchNorm2d(16),
            nn.SiLU(inplace=True),
            MBConv(16, 16, expansion=1),
            MBConv(16, 24, stride=2),
            MBConv(24, 24),
            MBConv(24, 40, stride=2),
            MBConv(40, 40),
            MBConv(40, 80, stride=2),
            MBConv(80, 80),
            nn.Conv2d(80, 128, 1),
            LayerNorm2d(128),
            nn.GELU(),
        )
        self.head = _head(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of a batch of images in [0, 1]."""
        return self.head(self.features(self.normalize(x)))


class TokensToGrid(nn.Module):
    """(N, 1 + s*s, D) tokens -> (N, D, s, s): the patch tokens on their grid, the first dropped.

    [`tokens_to_grid`][ctc_plugin.cam.tokens_to_grid] as a module.
    """

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Drop the class token and put the patch tokens back on the square grid."""
        return tokens_to_grid(tokens)


def _stride_two_conv(in_channels: int, out_channels: int) -> list[nn.Module]:
    """A 3x3 stride-2 convolution with BatchNorm and ReLU (one step of the ViT's stem)."""
    return [
        nn.Conv2d(in_channels, out_channels, 3, 2, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class SmallViT(nn.Module):
    """Vision transformer: a convolutional stem, a class token, four pre-norm encoder blocks.

    The patch embedding is a convolutional stem (Xiao et al., 2021, "Early convolutions help
    transformers see better"): three 3x3 stride-2 convolutions with BatchNorm and ReLU, then a
    1x1 convolution to the token width, so each token stands for an 8x8 patch of the 96x96
    image. A learned class token is prepended and learned position embeddings are added (both
    are constants the CTC pass shares as biases); then ``depth`` of torchvision's ViT encoder
    blocks (`EncoderBlock`: LayerNorm,
    ``nn.MultiheadAttention``, LayerNorm, a GELU MLP of twice the width) and a final LayerNorm.
    The class token takes part in attention as a register; the head classifies the patch tokens
    by global average pooling, like the CNN families' heads (so the class-specific explainers
    can apply it per position). A plain 8x8 patch projection reached 63% on ``shapes`` after 12
    epochs; the stem reaches the zoo's bar in 16.

    Args:
        num_classes: Number of output logits.
        image_size: Side of the input images (a multiple of 8).
        dim: Token width.
        depth: Number of encoder blocks.
        heads: Attention heads.
    """

    def __init__(
        self,
        num_classes: int,
        image_size: int = 96,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
    ):
        super().__init__()
        from torchvision.models.vision_transformer import EncoderBlock

        tokens = (image_size // 8) ** 2
        self.image_size = image_size
        self.normalize = Normalize()
        self.patches = nn.Sequential(
            *_stride_two_conv(3, 24),
            *_stride_two_conv(24, 48),
            *_stride_two_conv(48, dim),
            nn.Conv2d(dim, dim, 1),
        )
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.empty(1, tokens + 1, dim).normal_(std=0.02))
        self.blocks = nn.Sequential(
            *[
                EncoderBlock(heads, dim, 2 * dim, dropout=0.0, attention_dropout=0.0)
                for _ in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.to_grid = TokensToGrid()
        self.head = _head(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of a batch of images in [0, 1]."""
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            self._refuse_size(x)  # another size: as many patches as 96², but a wrong grid
        tokens = self.patches(self.normalize(x)).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.class_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = self.norm(self.blocks(tokens + self.position))
        return self.head(self.to_grid(tokens))

    def _refuse_size(self, x: torch.Tensor) -> None:
        """Raise a ValueError: ``x`` is not of the size the position embeddings are laid out for."""
        side, grid = self.image_size, self.image_size // 8
        raise ValueError(
            f"SmallViT takes {side}x{side} images (its position embeddings hold a {grid}x{grid} "
            f"grid of 8x8 patches); got {x.shape[-1]}x{x.shape[-2]} (width x height) images; "
            f"resize them to {side}x{side} (ShapesDataset(image_size={side}) draws them at that "
            "size)"
        )


#: Model classes by family name.
ARCHITECTURES: dict[str, type[nn.Module]] = {
    "vgg": SmallVGG,
    "resnet": SmallResNet,
    "densenet": SmallDenseNet,
    "inception": SmallInception,
    "efficientnet": SmallEfficientNet,
    "vit": SmallViT,
}

#: Name of each family's head (global pooling, flatten, linear layers): what its ``forward``
#: ends with; the class-specific explainer applies it per position.
HEADS: dict[str, str] = {
    "vgg": "classifier",
    "resnet": "head",
    "densenet": "head",
    "inception": "head",
    "efficientnet": "head",
    "vit": "head",
}
