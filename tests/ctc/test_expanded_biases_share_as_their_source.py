"""A bias expanded to the signal's shape is shared as the bias it was expanded from.

``"reference"`` runs its statistics per channel for a bias that is one value per channel and
over every unit for a bias that differs per unit, and it read which from the bias's shape. So
``torch.baddbmm(b.expand(B, T, C), x, w)`` (the form ``addmm``-style kernels take) and
``x @ w + b.expand(B, T, C)`` got other shares than ``x @ w + b``, though the three add the
same numbers; likewise a convolution's bias added as ``b.view(1, C, 1, 1).expand_as(z)``. An
expanded bias (stride 0) is now read as its source.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctc_plugin.ctc.speedups import SPEC

from .exactness import feature_scores, random_case


class _Tokens(nn.Module):
    """Tokens ``(B, T, C)`` through a linear map whose bias is added as ``written``."""

    def __init__(self, written: str) -> None:
        super().__init__()
        self.written = written
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.weight, self.bias = nn.Parameter(torch.empty(4, 5)), nn.Parameter(torch.empty(5))
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.relu(self.stem(x)).flatten(2).transpose(1, 2)
        batch, length, _ = tokens.shape
        if self.written == "plus bias":
            projected = tokens @ self.weight + self.bias
        elif self.written == "baddbmm expanded":
            expanded = self.bias.expand(batch, length, 5)
            projected = torch.baddbmm(expanded, tokens, self.weight.expand(batch, 4, 5))
        else:  # "plus expanded"
            projected = tokens @ self.weight + self.bias.expand(batch, length, 5)
        return self.head(torch.relu(projected).mean(1))


class _Convolution(nn.Module):
    """A convolution whose bias is given to ``F.conv2d`` or added expanded to the map."""

    def __init__(self, written: str) -> None:
        super().__init__()
        self.written = written
        self.weight, self.bias = nn.Parameter(torch.empty(4, 3, 3, 3)), nn.Parameter(torch.empty(4))
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.written == "plus bias":
            z = F.conv2d(x, self.weight, self.bias, padding=1)
        else:
            z = F.conv2d(x, self.weight, padding=1)
            z = z + self.bias.view(1, -1, 1, 1).expand_as(z)
        return self.head(torch.relu(z).mean((2, 3)))


@pytest.mark.parametrize(
    ("build", "written"),
    [
        (_Tokens, "baddbmm expanded"),
        (_Tokens, "plus expanded"),
        (_Convolution, "plus expanded"),
    ],
)
@pytest.mark.parametrize("mode", ["reference", "proportional"])
@pytest.mark.parametrize("speedups", [None, SPEC], ids=["fast", "spec"])
def test_an_expanded_bias_is_shared_as_its_source(build, written, mode, speedups) -> None:
    model, x, mask = random_case(lambda: build(written))
    plain, _, _ = random_case(lambda: build("plus bias"))
    torch.testing.assert_close(model(x), plain(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        feature_scores(model, x, mask, 1, mode, speedups).scores,
        feature_scores(plain, x, mask, 1, mode, speedups).scores,
        rtol=1e-10,
        atol=1e-12,
    )
