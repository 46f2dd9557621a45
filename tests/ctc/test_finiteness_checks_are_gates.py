"""``isfinite``, ``isnan`` and ``isinf`` of the signal are decided by the full pass, as comparisons.

A model that guards its activations (``torch.where(torch.isfinite(h), h, 0)``) was refused:
CTC had no rule for them. They are gate-only tensors of the full image, like ``h > 0``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.testing import RandomCNN, random_partition

GUARDS = {
    "where isfinite": lambda h: torch.where(torch.isfinite(h), h, 0.0),
    "masked_fill isnan": lambda h: h.masked_fill(h.isnan(), 0.0),
    "masked_fill isinf": lambda h: h.masked_fill(torch.isinf(h), 0.0),
    "posinf and neginf": lambda h: h.masked_fill(torch.isposinf(h) | h.isneginf(), 0.0),
}


class Guarded(nn.Module):
    def __init__(self, guard=None) -> None:
        super().__init__()
        self.model, self.guard = RandomCNN(seed=0), guard

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.model.stem(x)
        if self.guard is not None:
            h = self.guard(h)
        h = self.model.blocks(torch.relu(h))
        return self.model.head(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
@pytest.mark.parametrize("guard", sorted(GUARDS))
def test_a_guard_of_finite_activations_changes_no_score(mode, guard):
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    mask = random_partition(16, 16, 4)
    plain = CTC(Guarded().eval(), bias_sharing=mode).attribute(x, 1, feature_mask=mask)
    guarded = CTC(Guarded(GUARDS[guard]).eval(), bias_sharing=mode).attribute(
        x, 1, feature_mask=mask
    )
    torch.testing.assert_close(guarded, plain, rtol=0, atol=0)
