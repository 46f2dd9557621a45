"""A BatchNorm without running statistics is refused on several examples, whatever its shape.

A ``BatchNorm1d(track_running_stats=False)`` on pooled features (a classifier head, a
projection head) mixes the examples of the batch as a 2-d one does: example 0's map moved by
0.05 (``bias=False``) and 1.0 (``bias=True``) when examples 1 and 2 changed. Weight
standardisation (NFNet), whose ``batch_norm`` input is (1, out, fan-in), a batch of one, is
spared, and so are one image's tokens flattened into the rows (LeViT's ``bn(tokens.flatten(0,
1))``): explained as the same model with the normalisation written out.
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


class _TokenBatchNorm(nn.Module):
    """A convolution, its map as tokens normalised over all tokens, a ReLU, mean pooling, a linear.

    (The ReLU: the mean over the tokens of their normalisation alone would be its bias, a
    constant.)
    """

    def __init__(self, written_out: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.written_out = written_out
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8, track_running_stats=False)
        with torch.no_grad():
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.5, 0.5)
        self.fc = nn.Linear(8, 3)

    def _normalise(self, flat: torch.Tensor) -> torch.Tensor:
        if not self.written_out:
            return self.bn(flat)
        mean = flat.mean(0)
        var = flat.var(0, unbiased=False)
        return (flat - mean) / torch.sqrt(var + self.bn.eps) * self.bn.weight + self.bn.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.relu(self.conv(x)).flatten(2).transpose(1, 2)  # (N, T, C)
        tokens = self._normalise(tokens.flatten(0, 1)).reshape_as(tokens)
        return self.fc(torch.relu(tokens).mean(1))


def test_token_batch_norm_of_a_single_image_is_explained() -> None:
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = _TokenBatchNorm(written_out=False).double().eval()
    written = _TokenBatchNorm(written_out=True).double().eval()
    expected = IntegrativeCAM(written, layers=[written.conv]).attribute(x, target=1)
    ours = IntegrativeCAM(model, layers=[model.conv]).attribute(x, target=1)
    assert expected.abs().sum() > 0
    torch.testing.assert_close(ours, expected)
