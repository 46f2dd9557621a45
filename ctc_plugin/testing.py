"""Small models and masks for tests, tutorials and benchmarks (like ``captum.testing``).

:class:`RandomCNN` builds a small convolutional network from a few switches covering the
operations CTC must handle: BatchNorm with random running statistics, residual adds,
concatenation, max or average pooling, ReLU or LeakyReLU as modules or functional calls,
in-place or not, and an input normalisation written as plain tensor arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class CNNSpec:
    """The switches of a :class:`RandomCNN`.

    Attributes:
        width: Channels of every convolution.
        blocks: Number of conv blocks.
        batch_norm: BatchNorm after each block convolution.
        conv_bias: Whether block convolutions have a bias (besides BatchNorm's shift).
        residual: Add each block's input to its output.
        concat: Each block also runs a parallel 1x1 branch and concatenates it.
        pool: ``"max"`` or ``"avg"`` pooling after each block.
        activation: ``"relu"`` or ``"leaky_relu"``.
        functional: Call activations as ``torch.nn.functional`` functions, not modules.
        inplace: Use in-place activations.
        normalise: Start with ``(x - mean) / std`` written as tensor arithmetic.
        classes: Number of outputs.
    """

    width: int = 4
    blocks: int = 2
    batch_norm: bool = True
    conv_bias: bool = True
    residual: bool = False
    concat: bool = False
    pool: str = "max"
    activation: str = "relu"
    functional: bool = False
    inplace: bool = False
    normalise: bool = False
    classes: int = 4


class _Block(nn.Module):
    def __init__(self, spec: CNNSpec) -> None:
        super().__init__()
        self.spec = spec
        self.conv = nn.Conv2d(spec.width, spec.width, 3, padding=1, bias=spec.conv_bias)
        self.norm = nn.BatchNorm2d(spec.width) if spec.batch_norm else nn.Identity()
        self.branch = nn.Conv2d(spec.width, spec.width, 1) if spec.concat else None
        self.merge = nn.Conv2d(2 * spec.width, spec.width, 1) if spec.concat else None
        self.act = _activation_module(spec)

    def _activate(self, x: torch.Tensor) -> torch.Tensor:
        if not self.spec.functional:
            return self.act(x)
        if self.spec.activation == "leaky_relu":
            return F.leaky_relu(x, 0.1, inplace=self.spec.inplace)
        return F.relu(x, inplace=self.spec.inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._activate(self.norm(self.conv(x)))
        if self.branch is not None and self.merge is not None:
            out = self.merge(torch.cat([out, self._activate(self.branch(x))], dim=1))
        if self.spec.residual:
            out = out + x
        if self.spec.pool == "max":
            return F.max_pool2d(out, 2, ceil_mode=True)
        return F.avg_pool2d(out, 2, ceil_mode=True)


def _activation_module(spec: CNNSpec) -> nn.Module:
    if spec.activation == "leaky_relu":
        return nn.LeakyReLU(0.1, inplace=spec.inplace)
    if spec.activation == "relu":
        return nn.ReLU(inplace=spec.inplace)
    raise ValueError(f"activation must be 'relu' or 'leaky_relu'; got {spec.activation!r}")


class RandomCNN(nn.Module):
    """A small CNN with random weights and random BatchNorm statistics, in eval mode.

    Args:
        spec: The switches.
        seed: Seed of the random weights.
        in_channels: Input channels.
    """

    def __init__(self, spec: CNNSpec | None = None, seed: int = 0, in_channels: int = 3) -> None:
        super().__init__()
        self.spec = spec or CNNSpec()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("mean", torch.rand(1, in_channels, 1, 1, generator=generator))
        self.register_buffer("std", 0.5 + torch.rand(1, in_channels, 1, 1, generator=generator))
        self.stem = nn.Conv2d(in_channels, self.spec.width, 3, padding=1)
        self.blocks = nn.Sequential(*[_Block(self.spec) for _ in range(self.spec.blocks)])
        self.head = nn.Linear(self.spec.width, self.spec.classes)
        _randomise(self, generator)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits (N, classes)."""
        if self.spec.normalise:
            x = (x - self.mean) / self.std
        x = self.blocks(F.relu(self.stem(x)))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _randomise(model: nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for module in model.modules():
            for name, param in module.named_parameters(recurse=False):
                scale = 0.6 if name == "weight" else 0.3
                param.copy_((torch.rand(param.shape, generator=generator) * 2 - 1) * scale)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(
                    torch.rand(module.num_features, generator=generator) - 0.5
                )
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
                module.weight.add_(1.0)


def random_partition(
    height: int, width: int, features: int, seed: int = 0, batch: int = 1, spread: int = 3
) -> torch.Tensor:
    """A random integer feature mask (batch, 1, H, W) with non-contiguous ids.

    Every one of ``features`` ids (``spread * k + 1``) covers at least one pixel of each example.
    """
    if features > height * width:
        raise ValueError(f"cannot place {features} features on a {height}x{width} grid")
    generator = torch.Generator().manual_seed(seed)
    masks = []
    for _ in range(batch):
        labels = torch.randint(0, features, (height * width,), generator=generator)
        labels[torch.randperm(height * width, generator=generator)[:features]] = torch.arange(
            features
        )
        masks.append(labels.view(1, height, width))
    return torch.stack(masks) * spread + 1
