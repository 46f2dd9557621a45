"""Integrative CAM: a fused map whose range before the last min-max is below its 1e-7 warns
(EmptyMapWarning) instead of reading as an explanation; a module run twice has its stages
numbered; refusals of a model's own batch statistics and draws do not ask for model.eval()."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from ctc_plugin import IntegrativeCAM
from ctc_plugin.cam import EmptyMapWarning


def small_cnn(head_scale: float) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, stride=2),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    ).eval()  # fmt: skip
    with torch.no_grad():
        model[-1].weight.mul_(head_scale)
        model[-1].bias.zero_()
    return model


def test_a_faint_map_warns_and_a_normal_one_does_not():
    """Stage maps near 1e-11 (an untrained model's tiny logits) gave maps peaking at 0.3,
    silently."""
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with pytest.warns(EmptyMapWarning, match=r"peaks at 0\.\d+, not 1"):
        maps = IntegrativeCAM(small_cnn(1e-11)).attribute(x, target=1)
    assert (maps.flatten(1).amax(1) < 0.5).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmptyMapWarning)
        maps = IntegrativeCAM(small_cnn(1.0)).attribute(x, target=1)
    assert torch.allclose(maps.flatten(1).amax(1), torch.ones(2), atol=1e-3)


class Twice(nn.Module):
    """One convolution run twice."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.c = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.c(x))
        x = torch.relu(self.c(x))
        return self.head(x.mean((2, 3)))


def test_a_module_run_twice_has_its_stages_numbered():
    """Both stages were named 'c': their weights could not be told apart."""
    torch.manual_seed(0)
    _, layer_maps = IntegrativeCAM(Twice().eval()).attribute(
        torch.rand(1, 3, 8, 8), target=1, return_layer_maps=True
    )
    assert layer_maps.names == ["stem", "c#1", "c#2"]


def test_refusals_of_the_model_s_own_batch_statistics_and_draws_do_not_ask_for_eval():
    """They said 'call model.eval()', which changes neither a BatchNorm without running
    statistics nor a dropout the forward calls with training=True."""
    from ctc_plugin.inputs import TrainingModeError

    class Draws(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            hidden = nn.functional.dropout(torch.relu(self.conv(x)), 0.2, training=True)
            return self.head(hidden.mean((2, 3)))

    statistics = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    ).eval()  # fmt: skip
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(TrainingModeError, match=r"estimated on training data\)$"):
        IntegrativeCAM(statistics).attribute(x, target=1)
    with pytest.raises(TrainingModeError, match="training=self.training"):
        IntegrativeCAM(Draws().eval()).attribute(x, target=1)
