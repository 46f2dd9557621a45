"""Integrative CAM's bias calibration where a stage's rest cancels exactly.

The stem of ConvNeXt feeds only a LayerNorm, so ``sum(g * A) - sum(B)`` is 0 there; float32
gives rounding noise instead, and calibrating the channel map by that noise made an image's map
depend on the other images of its batch.
"""

from __future__ import annotations

import torch
import torchvision

from ctc_plugin import IntegrativeCAM


def convnext() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.convnext_tiny(num_classes=5).eval()


def test_an_images_map_does_not_depend_on_its_batch():
    model = convnext()
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    batch = IntegrativeCAM(model).attribute(x, target=1)
    alone = IntegrativeCAM(model).attribute(x[1:], target=1)
    torch.testing.assert_close(batch[1:], alone, atol=1e-4, rtol=0)


def test_a_rest_within_one_rounding_of_its_terms_is_zero():
    from ctc_plugin.cam.integrative import _cancelled_to_zero

    eps = torch.finfo(torch.float32).eps
    rest = torch.tensor([0.5 * eps, -0.9 * eps, 2.0 * eps, -0.25])
    magnitude = torch.ones(4)
    assert _cancelled_to_zero(rest, magnitude).tolist() == [0.0, 0.0, 2.0 * eps, -0.25]
