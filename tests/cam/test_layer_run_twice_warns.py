"""A chosen layer that runs more than once is explained at every call, with a warning.

torchvision's BasicBlock calls its ``relu`` twice. Captum's layer methods explain the last call
and pytorch-grad-cam's the first; Integrative CAM fuses both and says so.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision

from ctc_plugin import IntegrativeCAM


def test_a_layer_called_twice_is_named_with_its_calls():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    x = torch.rand(1, 3, 64, 64)
    with pytest.warns(UserWarning, match=r"'layer1.0.relu' \(2 calls\).*choose the block"):
        _, maps = IntegrativeCAM(model, layers=[model.layer1[0].relu]).attribute(
            x, target=0, return_layer_maps=True
        )
    assert maps.names == ["layer1.0.relu", "layer1.0.relu"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the block runs once: no warning
        IntegrativeCAM(model, layers=[model.layer1[0]]).attribute(x, target=0)


def test_the_warning_points_at_the_callers_line():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    with pytest.warns(UserWarning, match="more than once") as caught:
        IntegrativeCAM(model, layers=[model.layer1[0].relu]).attribute(torch.rand(1, 3, 64, 64), 0)
    assert caught[0].filename == __file__
