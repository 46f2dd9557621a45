"""Stochastic depth in training mode is refused like dropout: by name, before the model runs.

torchvision's Swin and ConvNeXt (``StochasticDepth``) and timm's and Hugging Face's models
(``DropPath``) drop residual branches at random in training mode. CTC refused them only when the
pass reached ``bernoulli_`` (an ``UnsupportedOperationError``, after part of the forward had
run) and Integrative CAM not before its forward either.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import StochasticDepth

from ctc_plugin import CTC, IntegrativeCAM, TrainingModeError
from ctc_plugin.features import GridSegmenter


class DropPath(nn.Module):
    """timm's ``DropPath`` as far as the check reads it: the class name and ``drop_prob``."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0:
            return x
        keep = x.new_empty(x.shape[0], 1, 1, 1).bernoulli_(1 - self.drop_prob)
        return x * keep / (1 - self.drop_prob)


def model_with(drop: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        drop,
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


METHODS = {
    "CTC": lambda model, x: CTC(model).attribute(x, 1, feature_mask=GridSegmenter(2)(x)),
    "IntegrativeCAM": lambda model, x: IntegrativeCAM(model).attribute(x, 1),
}


class MyDepth(StochasticDepth):
    """A user's subclass of torchvision's stochastic depth."""


DROPS = {
    "StochasticDepth": lambda rate: StochasticDepth(rate, "row"),
    "MyDepth": lambda rate: MyDepth(rate, "row"),
    "DropPath": DropPath,
}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("drop", sorted(DROPS))
def test_stochastic_depth_in_training_mode_is_refused_before_the_model_runs(method, drop):
    model = model_with(DROPS[drop](0.5)).train()
    calls = []
    handle = model[0].register_forward_hook(lambda *args: calls.append(1))
    x = torch.rand(1, 3, 8, 8)
    rng = torch.get_rng_state()
    with pytest.raises(TrainingModeError, match=rf"{drop} '1' is in training mode"):
        METHODS[method](model, x)
    assert not calls and torch.equal(rng, torch.get_rng_state())
    handle.remove()
    METHODS[method](model.eval(), x)  # in eval mode it runs


@pytest.mark.parametrize("drop", sorted(DROPS))
def test_stochastic_depth_of_rate_zero_is_the_identity_and_runs_in_training_mode(drop):
    model = model_with(DROPS[drop](0.0)).train()
    x = torch.rand(1, 3, 8, 8)
    mask = GridSegmenter(2)(x)
    trained = CTC(model).attribute(x, 1, feature_mask=mask)
    torch.testing.assert_close(trained, CTC(model.eval()).attribute(x, 1, feature_mask=mask))
