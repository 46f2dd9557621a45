"""A BatchNorm without running statistics is refused on several examples, whatever its shape.

A ``BatchNorm1d(track_running_stats=False)`` on pooled features (a classifier head, a
projection head) mixes the examples of the batch as a 2-d one does: example 0's map moved by
0.05 (``bias=False``) and 1.0 (``bias=True``) when examples 1 and 2 changed. Weight
standardisation (NFNet), whose ``batch_norm`` input is (1, out, fan-in), a batch of one, is
spared.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctc_plugin import IntegrativeCAM


class _BatchStatisticsHead(nn.Module):
    """Two convolutions, global pooling, a BatchNorm1d without running statistics, a linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm1d(4, track_running_stats=False)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(self.bn(x.mean(dim=(2, 3))))


@pytest.mark.parametrize("bias", [False, True])
def test_batch_statistics_of_pooled_features_are_refused_on_several_examples(bias: bool) -> None:
    model = _BatchStatisticsHead().eval()
    x = torch.rand(3, 3, 16, 20, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="depend on the other examples"):
        IntegrativeCAM(model, bias=bias).attribute(x, target=1)
