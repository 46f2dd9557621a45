"""A branch of the forward pass computed under ``torch.inference_mode()``.

Its results are inference tensors, which have no version counter; the sparse copies read one
to know that a map still holds its boxes, and every call failed with torch's "Inference tensors
do not track version counter" while the reference rules (`SPEC`) explained the model.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.ctc.speedups import SPEC
from ctc_plugin.testing import random_partition


class _InferenceBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.branch = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        with torch.inference_mode():
            side = self.branch(h) * 2
            side.add_(1)
        return self.head((h + side.clone()).mean((2, 3)))


@pytest.mark.parametrize("mode", ["proportional", "none", "reference"])
def test_the_sparse_copies_explain_it_as_the_reference_rules_do(mode: str) -> None:
    torch.manual_seed(0)
    model = _InferenceBranch().double().eval()
    x = torch.rand(2, 3, 12, 12, dtype=torch.float64)
    mask = random_partition(12, 12, 5)
    ctc = CTC(model, bias_sharing=mode)
    got, scores = ctc.attribute(x, 1, feature_mask=mask, return_feature_scores=True)
    reference = CTC(model, bias_sharing=mode)
    reference._speedups = SPEC
    torch.testing.assert_close(
        got, reference.attribute(x, 1, feature_mask=mask), atol=1e-12, rtol=0
    )
    if mode == "proportional":
        torch.testing.assert_close(scores.scores.sum(1), model(x)[:, 1].detach())
