"""Models that check their input in ``forward``: ``assert (x >= 0).all()`` and the like.

A comparison of the signal is what the full image decides (a gate-only tensor); reducing it over
the whole batch (``.all()``, ``.any()``, a 0-dim ``.sum()``) was refused as combining the copies
along dim 0, so a model that asserts its input range could not be explained (``x.min() >= 0``
stays refused, a maximum over the batch, and its refusal now says to compare instead). The
reduction is the model's own value on its batch, a constant of the pass: the checks pass or
fail as in the model, and the scores equal those of the same model without them.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import CTC


class Net(nn.Module):
    """A convolution, ReLU, mean pooling and a head, with one of several input checks."""

    def __init__(self, check: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)
        self.check = check

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (N, 3)."""
        if self.check == "all":
            assert (x >= 0).all(), "pixels must be in [0, 1]"
        elif self.check == "isfinite":
            assert torch.isfinite(x).all()
        elif self.check == "range":
            assert x.min() >= 0 and x.amax() <= 1, "pixels must be in [0, 1]"
        elif self.check == "any":
            if (x < 0).any():
                raise ValueError("negative pixels")
        h = torch.relu(self.conv(x))
        if self.check == "count":  # a 0-dim statistic of a gate, read as a number
            assert float((h > 0).sum()) >= 0
        return self.head(h.mean((2, 3)))


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)).double()
    return x, (torch.arange(8) // 4).view(1, 1, 1, 8).expand(1, 1, 8, 8)


@pytest.mark.parametrize("mode", ["proportional", "reference", "none"])
@pytest.mark.parametrize("check", ["all", "isfinite", "any", "count"])
def test_checks_leave_the_scores_of_the_model_without_them(check, mode):
    x, mask = _inputs()
    checked, plain = Net(check).double().eval(), Net("").double().eval()
    got = CTC(checked, bias_sharing=mode).attribute(x, target=1, feature_mask=mask)
    expected = CTC(plain, bias_sharing=mode).attribute(x, target=1, feature_mask=mask)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_a_failing_check_fails_as_in_the_model():
    x, mask = _inputs()
    with pytest.raises(AssertionError, match=r"pixels must be in \[0, 1\]"):
        CTC(Net("all").double().eval()).attribute(x - 0.5, target=1, feature_mask=mask)


def test_a_check_of_the_batch_s_minimum_is_pointed_at_a_comparison():
    """``x.min()`` over the batch mixes the examples (as a gate it would be refused): the
    refusal says how to write the check so that CTC takes it."""
    x, mask = _inputs()
    with pytest.raises(Exception, match=r"for an input check compare instead, assert \(x >= 0\)"):
        CTC(Net("range").double().eval()).attribute(x, target=1, feature_mask=mask)


def test_other_results_without_the_copies_rows_stay_refused():
    class Doubled(Net):
        def forward(self, x):
            counts = (self.conv(x) > 0).sum(0)  # summed over the batch, kept as a map: refused
            return self.head((torch.relu(self.conv(x)) * counts).mean((2, 3)))

    x, mask = _inputs()
    with pytest.raises(Exception, match="along dim 0"):
        CTC(Doubled("").double().eval()).attribute(x, target=1, feature_mask=mask)
