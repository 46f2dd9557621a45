"""The small classifier that the command-line tests hand to ``--model module:callable``.

Test modules subclass it (models that refuse, change with the image size or convert their
input) and name their own ``module:callable`` factories returning it.
"""

from __future__ import annotations

import torch
from torch import nn


class Net(nn.Module):
    """A classifier that takes any size: a convolution, mean pooling, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (N, 3)."""
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))
