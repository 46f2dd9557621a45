"""The signal written into zeros is linear: ShiftViT's and TSM's shifts.

``out = torch.zeros_like(x); out[:, :g, :, :-1] = x[:, :g, :, 1:]`` was refused as mixing a
constant and the signal in place, although zeros share no bias; ``x * 0`` in their place ran.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.ctc.errors import UnsupportedOperationError
from ctc_plugin.testing import random_partition

ALLOCATIONS = {
    "zeros_like": torch.zeros_like,
    "new_zeros": lambda x: x.new_zeros(x.shape),
    "torch.zeros": lambda x: torch.zeros(x.shape, dtype=x.dtype),
    "empty_like then zero_": lambda x: torch.empty_like(x).zero_(),
    "x * 0 (ran before)": lambda x: x * 0,
}


def _shift(allocate):
    def shift(x: torch.Tensor) -> torch.Tensor:
        out, g = allocate(x), x.shape[1] // 4
        out[:, :g, :, :-1] = x[:, :g, :, 1:]
        out[:, g : 2 * g, :, 1:] = x[:, g : 2 * g, :, :-1]
        out[:, 2 * g : 3 * g, :-1, :] = x[:, 2 * g : 3 * g, 1:, :]
        out[:, 3 * g :, 1:, :] = x[:, 3 * g :, :-1, :]
        return out

    return shift


class Shifted(nn.Module):
    def __init__(self, between) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.head, self.between = nn.Linear(8, 3), between

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.between(torch.relu(self.conv(x)))
        return self.head(torch.relu(self.conv2(y)).mean((2, 3)))


@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
@pytest.mark.parametrize("allocation", sorted(ALLOCATIONS))
def test_a_shift_into_zeros_scores_as_into_a_product_by_zero(allocation, mode):
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mask = random_partition(12, 12, 5)
    expected = CTC(Shifted(_shift(lambda t: t * 0)).double().eval(), bias_sharing=mode).attribute(
        x, 1, feature_mask=mask
    )
    model = Shifted(_shift(ALLOCATIONS[allocation])).double().eval()
    attribution, scores = CTC(model, bias_sharing=mode).attribute(
        x, 1, feature_mask=mask, return_feature_scores=True
    )
    torch.testing.assert_close(attribution, expected, rtol=1e-12, atol=1e-14)
    if mode == "proportional":
        torch.testing.assert_close(scores.scores.sum(1), model(x)[:, 1], rtol=1e-10, atol=1e-12)


def _written(allocate, index):
    def between(x: torch.Tensor) -> torch.Tensor:
        out = allocate(x)
        out[index] = x[index]
        return out

    return between


def test_a_write_into_ones_is_still_refused():
    model = Shifted(_written(torch.ones_like, (slice(None), slice(0, 2)))).eval()
    with pytest.raises(UnsupportedOperationError, match="mixes a constant and the"):
        CTC(model).attribute(torch.rand(1, 3, 8, 8), 1, feature_mask=random_partition(8, 8, 3))


def test_a_write_into_chosen_copies_is_refused():
    def between(x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        out[:1] = x[:1] * 2
        return out

    with pytest.raises(UnsupportedOperationError, match="selects or slices copies"):
        CTC(Shifted(between).eval()).attribute(
            torch.rand(1, 3, 8, 8), 1, feature_mask=random_partition(8, 8, 3)
        )


def test_a_write_through_a_view_of_zeros_is_refused_as_mixing():
    """The zeros buffer behind the view would hold the copies untracked: refused as before, not
    with a message about an untraced output."""

    def between(x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])
        left = out[:, : x.shape[1]]
        left[...] = x
        return out[:, x.shape[1] :] + out[:, : x.shape[1]]

    with pytest.raises(UnsupportedOperationError, match="mixes a constant and the"):
        CTC(Shifted(between).eval()).attribute(
            torch.rand(1, 3, 8, 8), 1, feature_mask=random_partition(8, 8, 3)
        )
