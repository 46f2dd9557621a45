"""A map that is zero because the score's gradient is zero at every stage says so.

torchvision builds its ``VisionTransformer`` with a head of zeros: before training every logit
is 0 and no stage gets a gradient. The warning blamed cancelling Grad-CAM++ weights and
pointed to ``phi='identity'``, which gives the same zero map.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torchvision.models import VisionTransformer

from ctc_plugin import IntegrativeCAM
from ctc_plugin.cam import ZeroMapWarning


def _vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(
        image_size=16,
        patch_size=8,
        num_layers=2,
        num_heads=1,
        hidden_dim=8,
        mlp_dim=8,
        num_classes=3,
    ).eval()


@pytest.mark.parametrize("phi", ["exp", "identity"])
def test_a_head_of_zeros_is_named_as_the_reason(phi: str) -> None:
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with pytest.warns(ZeroMapWarning, match=r"\[0, 1\].*gradient of the target score is 0"):
        IntegrativeCAM(_vit(), phi=phi).attribute(x, target=1)


def test_a_trained_head_keeps_the_other_reasons() -> None:
    model = _vit()
    with torch.no_grad():
        model.heads.head.weight.normal_(generator=torch.Generator().manual_seed(1))
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        IntegrativeCAM(model).attribute(x, target=1)
    assert not any("gradient of the target score is 0" in str(w.message) for w in caught)
