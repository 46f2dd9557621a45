"""A list of boolean masks covers the last two dimensions of inputs of any rank from 3.

For a sequence batch (N, L, D) the list's (L, D) masks became a (1, 1, L, D) mask, one
dimension more than the input, and the call was refused with "add the batch dimension:
x.unsqueeze(0)", which the input had. For rows of features (N, F) the list was told its masks
must be (N, F), the batch size included. The masks now take the input's rank, and rows are told
to give integer ids.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import CTC


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).double().eval()


def test_masks_of_a_sequence_batch_are_its_two_last_dimensions():
    x = torch.rand(2, 3, 4, dtype=torch.float64)
    first = torch.zeros(3, 4, dtype=torch.bool)
    first[:, :2] = True
    second = torch.zeros(3, 4, dtype=torch.bool)
    second[0, 2:] = True
    got = CTC(_model()).attribute(x, 1, feature_mask=[first, second])
    ids = torch.full((1, 3, 4), 2)  # the pixels no mask covers: id len(masks)
    ids[0][first], ids[0][second] = 0, 1
    torch.testing.assert_close(got, CTC(_model()).attribute(x, 1, feature_mask=ids))


def test_rows_of_features_are_told_to_give_integer_ids():
    x = torch.rand(2, 12, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"rows of features \(N, F\).*torch\.arange"):
        CTC(_model()).attribute(x, 1, feature_mask=[torch.arange(12) < 6])
