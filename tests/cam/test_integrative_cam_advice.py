"""Refusals whose advice works, and bound methods explained as their modules.

- a single module given as ``layers=`` is told ``list(module.children())`` (``list(module)``
  for an ``nn.Sequential``): a ResNet ``BasicBlock`` does not iterate, a ``ModuleDict``
  iterates over its names;
- ``reshape_transform`` without ``layers`` on a plain function wrapping a known ViT is told
  that a function's blocks cannot be found (not that its stages are convolutions);
- ``model.forward`` is explained as ``model`` (its blocks found, its layers named).
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from ctc_plugin import IntegrativeCAM
from ctc_plugin.cam import tokens_to_grid


def _advised_layers(module: nn.Module) -> list[nn.Module]:
    """The ``layers=`` the refusal of ``module`` advises for its submodules, evaluated."""
    with pytest.raises(TypeError) as refusal:
        IntegrativeCAM(nn.Identity(), layers=module)
    advice = str(refusal.value).rsplit("layers=", 1)[1].split(" ")[0].rstrip(",;.")
    return eval(advice, {"list": list}, {"module": module})  # noqa: S307 - our own message


@pytest.mark.parametrize(
    "module",
    [
        torchvision.models.resnet18(weights=None).layer1[0],
        nn.ModuleDict({"a": nn.Conv2d(3, 4, 3), "b": nn.Conv2d(4, 4, 3)}),
    ],
    ids=["BasicBlock", "ModuleDict"],
)
def test_the_advice_for_a_single_module_gives_its_submodules(module: nn.Module) -> None:
    layers = _advised_layers(module)
    assert layers and all(isinstance(layer, nn.Module) for layer in layers)
    IntegrativeCAM(nn.Identity(), layers=layers)  # accepted


def _vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(16, 8, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=8).eval()


def test_reshape_transform_without_layers_on_a_function_says_its_blocks_cannot_be_found() -> None:
    vit = _vit()
    cam = IntegrativeCAM(lambda x: vit(x), reshape_transform=tokens_to_grid)
    with pytest.raises(ValueError, match="reshape_transform") as refusal:
        cam.attribute(torch.rand(1, 3, 16, 16), target=1)
    assert "convolutional stages" not in str(refusal.value)
    assert "plain function, whose blocks cannot be found" in str(refusal.value)


def test_a_bound_forward_method_is_explained_as_its_module() -> None:
    vit, x = _vit(), torch.rand(1, 3, 16, 16)
    expected = IntegrativeCAM(vit).attribute(x, target=1)
    torch.testing.assert_close(IntegrativeCAM(vit.forward).attribute(x, target=1), expected)


def test_a_layer_listed_twice_is_refused_by_its_positions() -> None:
    """It was a stage twice (weighing double in the fusion; the map moved by 0.10 on a
    ResNet-18) and the warning said it had run twice in one forward pass."""
    model = torchvision.models.resnet18(weights=None).eval()
    with pytest.raises(ValueError, match=r"more than once \(Sequential at positions \[0, 1\]\)"):
        IntegrativeCAM(model, layers=[model.layer3, model.layer3, model.layer4])
