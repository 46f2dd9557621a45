"""A model in training mode whose modules compute the same in both modes (dropout with p = 0,
LayerNorm, GroupNorm) is explained as it is, as Inputs says; dropout with p > 0 is refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.inputs import TrainingModeError


def model_with(dropout: float) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Flatten(2),
        nn.LayerNorm(64),
        nn.Flatten(),
        nn.Linear(256, 3),
    ).double()


@pytest.mark.parametrize("mode", ["reference", "proportional", "none"])
def test_training_mode_with_nothing_random_or_running_gives_the_eval_scores(mode):
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    mask = (torch.arange(8) // 4).view(1, 1, 1, 8).expand(1, 1, 8, 8)
    model = model_with(0.0)
    expected = CTC(model.eval(), bias_sharing=mode).attribute(x, target=1, feature_mask=mask)
    scores = CTC(model.train(), bias_sharing=mode).attribute(x, target=1, feature_mask=mask)
    torch.testing.assert_close(scores, expected)
    assert model.training
    with pytest.raises(TrainingModeError):
        CTC(model_with(0.1).train(), bias_sharing=mode).attribute(x, 1, feature_mask=mask)
