"""Every method on a model that carries full backward hooks of the user's.

``register_full_backward_hook`` (on a module, or globally with
``register_module_full_backward_hook``) passes the module's inputs and output through an autograd
function that returns them unchanged: the next layer gets ``x.view_as(x)``, another tensor. The
hooks compute nothing in the forward pass, so every method must give what it gives without them.
Integrative CAM lost its convolution chains there: a no-op hook on a convolution made its
BatchNorm and ReLU a stage of their own (0.25 off the fused map).
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from ctc_plugin import CTC, CTCAttributor, CTCComposite, IntegrativeCAM
from ctc_plugin.testing import random_partition

CLASSES = 5


def _small() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, CLASSES),
    )  # fmt: skip
    model[1].running_mean.uniform_(-0.2, 0.2)
    model[1].running_var.uniform_(0.5, 1.5)
    return model.eval()


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=CLASSES).eval()


def _noop(module: nn.Module, grad_input: tuple, grad_output: tuple) -> None:
    """A full backward hook that only looks."""


def _maps(model: nn.Module, images: torch.Tensor, **options) -> tuple[torch.Tensor, object]:
    return IntegrativeCAM(model, **options).attribute(images, [0, 1], return_layer_maps=True)


#: (model, modules hooked); resnet18's in-place ReLUs after its BatchNorms cannot take an output
#: hook there (torch refuses an in-place write into the hook function's view).
PLACES = [
    (_small, "every convolution"), (_small, "every BatchNorm"), (_small, "every module"),
    (_resnet, "every convolution"),
]  # fmt: skip


@pytest.mark.parametrize(("build", "where"), PLACES)
def test_integrative_cam_maps_are_those_without_the_hooks(build, where):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model = build()
    expected, expected_layers = _maps(model, images)
    kinds = {"every convolution": nn.Conv2d, "every BatchNorm": nn.BatchNorm2d}.get(
        where, nn.Module
    )
    handles = [
        m.register_full_backward_hook(_noop) for m in model.modules() if isinstance(m, kinds)
    ]
    actual, layers = _maps(model, images)
    for handle in handles:
        handle.remove()
    assert layers.names == expected_layers.names and layers.steps == expected_layers.steps
    torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(layers.maps, expected_layers.maps)


def test_a_global_full_backward_hook_changes_no_map():
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    model = _small()
    expected = _maps(model, images)[0]
    handle = nn.modules.module.register_module_full_backward_hook(_noop)
    try:
        actual = _maps(model, images)[0]
    finally:
        handle.remove()
    torch.testing.assert_close(actual, expected)


def test_a_chosen_layer_with_a_backward_hook_keeps_its_map():
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    model = _small()
    expected = _maps(model, images, layers=[model[0], model[3]])[1]
    model[0].register_full_backward_hook(_noop)
    model[3].register_full_backward_hook(_noop)
    actual = _maps(model, images, layers=[model[0], model[3]])[1]
    assert actual.steps == expected.steps
    torch.testing.assert_close(actual.maps, expected.maps)


@pytest.mark.parametrize("mode", ["none", "proportional", "reference"])
def test_ctc_scores_are_those_without_the_hooks(mode):
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    mask = random_partition(16, 16, 6)
    model = _small()
    expected = CTC(model, bias_sharing=mode).attribute(images, [0, 1], feature_mask=mask)
    with CTCAttributor(model, CTCComposite(), feature_mask=mask) as attributor:
        expected_zennit = attributor(images, torch.eye(CLASSES)[[0, 1]])[1]
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)):
            module.register_full_backward_hook(_noop)
    actual = CTC(model, bias_sharing=mode).attribute(images, [0, 1], feature_mask=mask)
    torch.testing.assert_close(actual, expected)
    with CTCAttributor(model, CTCComposite(), feature_mask=mask) as attributor:
        torch.testing.assert_close(
            attributor(images, torch.eye(CLASSES)[[0, 1]])[1], expected_zennit
        )
