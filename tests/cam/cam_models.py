"""Tiny CNNs shared by the Integrative CAM tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def randomise_batchnorm(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Give every BatchNorm random affine parameters and running statistics (in place)."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            with torch.no_grad():
                module.running_mean.copy_(torch.randn(c, generator=generator))
                module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                if module.affine:
                    module.weight.copy_(torch.randn(c, generator=generator))
                    module.bias.copy_(torch.randn(c, generator=generator))
    return model


class TinyCNN(nn.Module):
    """conv-BN-ReLU, max-pool, conv-BN-ReLU, conv, global average pool, linear."""

    def __init__(self, classes: int = 5, inplace: bool = True) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(inplace=inplace),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=inplace),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(inplace=inplace),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TinyResidual(nn.Module):
    """A stem and one residual block with ``out += identity`` and functional ReLUs."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.conv1 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        out = torch.relu_(out)
        return self.fc(out.mean(dim=(2, 3)))


def tiny_cnn(seed: int = 0, **kwargs) -> TinyCNN:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    return randomise_batchnorm(TinyCNN(**kwargs), generator).eval()


def tiny_residual(seed: int = 0) -> TinyResidual:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    return randomise_batchnorm(TinyResidual(), generator).eval()
