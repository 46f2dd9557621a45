"""Token pruning (``topk`` of attention-like scores, then ``gather`` or indexing with the
indices) is refused with a reason that names the computed indices, not a conversion or a gate
read as a signal."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.ctc.errors import UnsupportedOperationError


def gathered(tokens: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    return torch.gather(tokens, 1, indices.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def indexed(tokens: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    return tokens[torch.arange(len(tokens))[:, None], indices]


def first_rows(tokens: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    return tokens[:, indices[0]]


class Pruned(nn.Module):
    """Patch tokens, the eight with the highest softmax score kept, averaged."""

    def __init__(self, select: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, 8, 8, 8)
        self.head = nn.Linear(8, 3)
        self.select = select

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        indices = tokens.sum(-1).softmax(-1).topk(8, dim=1).indices
        return self.head(self.select(tokens, indices).mean(1))


@pytest.mark.parametrize("select", [gathered, indexed, first_rows])
@pytest.mark.parametrize("mode", ["reference", "none"])
def test_token_pruning_is_refused_naming_the_computed_indices(select, mode):
    """It said 'unsqueeze converts the signal to torch.int64' or 'reads the output of softmax
    ... as a signal'."""
    torch.manual_seed(0)
    model = Pruned(select).eval()
    segments = torch.arange(4).view(1, 1, 2, 2).repeat_interleave(16, 2).repeat_interleave(16, 3)
    with pytest.raises(UnsupportedOperationError, match="indices, such as those of topk"):
        CTC(model, bias_sharing=mode).attribute(torch.rand(1, 3, 32, 32), 1, feature_mask=segments)
