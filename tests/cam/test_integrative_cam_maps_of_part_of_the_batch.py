"""A stage whose map has another number of rows than the batch has examples is refused by name.

A model that loops over its batch (each image alone through the layers) or a chosen layer that
returns a tensor of the model's own (a (1, C, H, W) prior) failed deep in the channel weights
with torch's ``output with shape [1, 4, 8, 8] doesn't match the broadcast shape``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import IntegrativeCAM


class _OneImageAtATime(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.prior = nn.Identity()
        self.weighting = nn.Parameter(torch.rand(1, 3, 8, 8))
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = [self.relu(self.conv(image[None] * self.prior(self.weighting))) for image in x]
        return self.fc(torch.cat(rows).mean(dim=(2, 3)))


@pytest.mark.parametrize("layers", [None, "relu", "prior"])
def test_a_map_with_one_row_for_two_examples_is_refused(layers: str | None) -> None:
    model = _OneImageAtATime().eval()
    chosen = None if layers is None else [getattr(model, layers)]
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"has 1 row for 2 examples.*one image at a time"):
        IntegrativeCAM(model, layers=chosen).attribute(x, target=1)
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
    assert IntegrativeCAM(model, layers=chosen).attribute(x[:1], target=1).shape == (1, 1, 8, 8)
