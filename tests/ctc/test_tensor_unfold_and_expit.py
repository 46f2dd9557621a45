"""``Tensor.unfold`` (patches, HaloNet's blocks) is a view that keeps the copies; ``expit``.

``x.unfold(2, p, p).unfold(3, p, p)`` patchifies a from-scratch ViT and cuts timm's HaloNet
maps into blocks; it was refused (the rules table's ``unfold`` was ``F.unfold`` only).
``torch.special.expit`` is ``sigmoid`` under another name; it was refused, named by torch's
internal ``torch._C._special.special_expit``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.ctc.calls import operation_name
from ctc_plugin.ctc.errors import UnsupportedOperationError
from ctc_plugin.testing import random_partition


class Patches(nn.Module):
    """A linear patch embedding and a small head, patchified in one of three ways."""

    def __init__(self, how: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.head, self.how = nn.Linear(3 * 4 * 4, 8), nn.Linear(8, 3), how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.how == "Tensor.unfold":
            patches = x.unfold(2, 4, 4).unfold(3, 4, 4)  # (N, C, h, w, 4, 4)
            patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(n, -1, 48)
        elif self.how == "F.unfold":
            patches = nn.functional.unfold(x, 4, stride=4).transpose(1, 2)
        else:
            patches = x.reshape(n, 3, 3, 4, 3, 4).permute(0, 2, 4, 1, 3, 5).reshape(n, 9, 48)
        tokens = torch.relu(self.embed(patches))
        return self.head(tokens.mean(1))


@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
@pytest.mark.parametrize("how", ["Tensor.unfold", "F.unfold"])
def test_patchify_by_unfold_scores_as_by_reshape(how, mode):
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mask = random_partition(12, 12, 5)
    expected = CTC(Patches("reshape").double().eval(), bias_sharing=mode).attribute(
        x, 1, feature_mask=mask
    )
    got = CTC(Patches(how).double().eval(), bias_sharing=mode).attribute(x, 1, feature_mask=mask)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


class Blocks(nn.Module):
    """HaloNet-style blocks of a conv map: ``unfold`` along the spatial dims, then pooled."""

    def __init__(self, dim: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.head, self.dim = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 2), dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        blocks = y.unfold(self.dim, 2, 2)
        return self.head(blocks.amax(-1).mean((2, 3)) if self.dim else blocks.mean((2, 3, 4)))


def test_blocks_of_a_map_add_up():
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    model = Blocks().double().eval()
    _, scores = CTC(model).attribute(
        x, 1, feature_mask=random_partition(8, 8, 4), return_feature_scores=True
    )
    torch.testing.assert_close(scores.scores.sum(1), model(x)[:, 1], rtol=1e-12, atol=1e-12)


def test_unfold_along_the_copies_is_refused():
    with pytest.raises(UnsupportedOperationError, match="slides windows along the copies"):
        CTC(Blocks(dim=0).eval()).attribute(
            torch.rand(2, 3, 8, 8), 1, feature_mask=random_partition(8, 8, 4)
        )


class Expit(nn.Module):
    def __init__(self, gate) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.head, self.gate = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 2), gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.head((y * self.gate(y)).mean((2, 3)))


def test_expit_is_sigmoid():
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    mask = random_partition(8, 8, 4)
    expected = CTC(Expit(torch.sigmoid).eval()).attribute(x, 1, feature_mask=mask)
    got = CTC(Expit(torch.special.expit).eval()).attribute(x, 1, feature_mask=mask)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert operation_name(torch.special.expit) == "torch.special.expit"
