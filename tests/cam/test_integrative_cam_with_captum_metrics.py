"""Integrative CAM's maps in Captum's metrics, with the recipe of docs/reference/cam.md."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from captum.metrics import infidelity, sensitivity_max

from ctc_plugin.cam import IntegrativeCAM
from ctc_plugin.testing import RandomCNN

PAGE = Path(__file__).parents[2] / "docs" / "reference" / "cam.md"


def _recipe() -> str:
    """The page's block of ``cam_like_inputs``: its import, the ``cam`` it makes, the call."""
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    return next(block for block in blocks if "def cam_like_inputs" in block)


def test_the_pages_recipe_feeds_infidelity_and_sensitivity_max():
    model = RandomCNN(seed=0).eval()
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    scope = {"IntegrativeCAM": IntegrativeCAM, "model": model, "images": images}
    exec(_recipe(), scope)  # runs the page's block as written: import, cam, the call
    assert isinstance(scope["cam"], IntegrativeCAM) and scope["sensitivity_max"] is sensitivity_max
    cam_like_inputs = scope["cam_like_inputs"]
    maps = cam_like_inputs(images, 1)
    assert maps.shape == images.shape
    assert torch.equal(maps[:, 0], maps[:, 2])  # the one map on every channel
    (as_tuple,) = cam_like_inputs((images,), 1)
    assert torch.equal(as_tuple, maps)

    def perturb(inputs):
        noise = torch.randn(inputs.shape, generator=torch.Generator().manual_seed(1)) * 0.01
        return noise, inputs - noise

    assert infidelity(model, perturb, images, maps, target=1).isfinite().all()
    assert sensitivity_max(cam_like_inputs, images, target=1).isfinite().all()
