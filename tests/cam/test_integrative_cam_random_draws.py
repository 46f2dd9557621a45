"""Integrative CAM refuses a model that draws random numbers, as CTC does; dropout p=0 is taken.

Stochastic depth in training mode (torchvision's ``StochasticDepth``, timm's ``DropPath``) is
no module the training-mode check knows: it multiplies a branch by random draws, and the map
changed from call to call. A ``Dropout(p=0)`` in training mode is the identity (timm's
``pos_drop``), which both methods now run.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import StochasticDepth

from ctc_plugin import CTC, IntegrativeCAM, TrainingModeError
from ctc_plugin.testing import random_partition


class _Net(nn.Module):
    def __init__(self, drop: nn.Module) -> None:
        super().__init__()
        self.stem, self.branch = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.drop, self.head = drop, nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = h + self.drop(torch.relu(self.branch(h)))
        return self.head(h.mean(dim=(2, 3)))


def test_stochastic_depth_in_training_mode_is_refused_and_the_model_left_as_it_was():
    model = _Net(StochasticDepth(0.5, "row")).eval()
    model.drop.train()
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(TrainingModeError, match="StochasticDepth 'drop' is in training mode"):
        IntegrativeCAM(model).attribute(x, 1)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    model.drop.eval()
    assert IntegrativeCAM(model).attribute(x, 1).shape == (2, 1, 8, 8)


def test_dropout_of_p_zero_in_training_mode_is_the_identity_for_both_methods():
    model = _Net(nn.Dropout(0.0)).eval()
    model.drop.train()
    x = torch.rand(2, 3, 8, 8)
    reference = _Net(nn.Identity()).eval()
    reference.load_state_dict(model.state_dict())
    torch.testing.assert_close(
        IntegrativeCAM(model).attribute(x, 1), IntegrativeCAM(reference).attribute(x, 1)
    )
    mask = random_partition(8, 8, 4)
    torch.testing.assert_close(
        CTC(model).attribute(x, 1, feature_mask=mask),
        CTC(reference).attribute(x, 1, feature_mask=mask),
    )
