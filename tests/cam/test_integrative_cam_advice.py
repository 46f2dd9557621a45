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


class _TokenNet(nn.Module):
    """A class token and 2 x 4 patch tokens from a 4-pixel patch embedding, pooled."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, 4)
        self.token = nn.Parameter(torch.randn(1, 1, 8))
        self.block = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.token.expand(len(x), -1, -1), tokens], 1)
        return self.head(self.block(tokens)[:, 1:].mean(1))


def test_a_reshape_transform_that_fails_or_returns_no_map_is_named_with_its_layer() -> None:
    """Torch's bare "shape '[5, -1]' is invalid" came through, naming neither the layer nor the
    reshape; a reshape returning no 4-D map was reported as what the layer returned."""
    torch.manual_seed(0)
    model, images = _TokenNet().eval(), torch.rand(2, 3, 8, 16)
    failing = IntegrativeCAM(
        model, layers=[model.block], reshape_transform=lambda t: t.reshape(5, -1)
    )
    message = r"failed on the output of layer 'block', shaped \(2, 9, 8\): shape '\[5, -1\]'"
    with pytest.raises(ValueError, match=message):
        failing.attribute(images, target=0)
    flat = IntegrativeCAM(model, layers=[model.block], reshape_transform=lambda t: t[:, 1:])
    with pytest.raises(ValueError, match=r"reshape_transform returned \(2, 8, 8\) for the output "
                       r"of layer 'block', shaped \(2, 9, 8\)"):  # fmt: skip
        flat.attribute(images, target=0)
