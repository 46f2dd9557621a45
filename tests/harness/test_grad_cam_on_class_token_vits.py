"""The benchmark's pytorch-grad-cam methods on a ViT that classifies its class token alone.

The patch tokens its last block outputs reach no score, so a Grad-CAM of that block is zero
everywhere; the methods take the layer ``grad_cam_layer`` names (the last block's first norm, as
pytorch-grad-cam's ViT tutorial does), whose patch tokens do reach the class token.
"""

from __future__ import annotations

import pytest
import torch

from ctc_plugin.harness.methods import _grad_cam
from ctc_plugin.testing import randomise_statistics_and_biases

timm = pytest.importorskip("timm")


@pytest.mark.parametrize("method", ["GradCAM", "GradCAMPlusPlus"])
def test_a_class_token_vit_gets_maps_that_are_not_all_zero(method: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32, global_pool="token"
    )
    model = randomise_statistics_and_biases(model, seed=1, noise=0.05).eval()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    maps = _grad_cam(method)(model, images, torch.tensor([1, 3]), None)
    assert maps.shape == (2, 1, 32, 32)
    assert maps.abs().amax() > 0  # the last block's map is zero for every image
