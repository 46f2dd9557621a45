"""Integrative CAM's bias calibration where a stage's rest cancels exactly.

The stem of a freshly built ConvNeXt feeds only a LayerNorm and has no bias, so
``sum(g * A) - sum(B)`` is 0 there; summed in float32 it came out as rounding noise that depends
on how the batch's sums are blocked, and calibrating the channel map by that noise made an
image's map depend on the other images of its batch. The rest is summed in float64 and a rest
within a rounding of float32 is 0.
"""

from __future__ import annotations

import pytest
import torch
import torchvision

from ctc_plugin import IntegrativeCAM
from ctc_plugin.cam.calibration import stage_rest


def convnext() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.convnext_tiny(num_classes=5).eval()


@pytest.mark.parametrize("size", [(64, 96), (128, 128)])
def test_an_images_maps_do_not_depend_on_its_batch(size):
    model = convnext()
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    batch, stages = IntegrativeCAM(model).attribute(x, target=1, return_layer_maps=True)
    alone, its_stages = IntegrativeCAM(model).attribute(x[1:], target=1, return_layer_maps=True)
    torch.testing.assert_close(batch[1:], alone, atol=1e-4, rtol=0)
    torch.testing.assert_close(stages.maps[1:], its_stages.maps, atol=1e-4, rtol=0)


def test_a_rest_that_cancels_is_zero_and_a_small_real_one_is_kept():
    generator = torch.Generator().manual_seed(0)
    half = torch.rand(1, 4, 8, 8, generator=generator)
    act = torch.cat([half, -half], dim=1)  # sum(g * A) = 0 exactly for g = 1
    grad = torch.ones_like(act)
    bias = torch.zeros(1, 8, 8)
    assert stage_rest(grad, act, bias).tolist() == [0.0]
    magnitude = float(act.abs().sum())
    shifted = act.clone()
    shifted[0, 0, 0, 0] += 4 * torch.finfo(torch.float32).eps * magnitude  # 4 roundings: real
    kept = float(stage_rest(grad, shifted, bias))
    assert kept == pytest.approx(float(shifted.double().sum()), rel=1e-3) and kept != 0
