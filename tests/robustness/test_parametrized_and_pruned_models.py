"""Every method on models whose weights torch makes at each call: parametrizations, pruning.

``torch.nn.utils.parametrize`` (``weight_norm``, ``spectral_norm``, ``orthogonal``, one's own),
the older hook-style ``weight_norm`` and ``spectral_norm``, and ``torch.nn.utils.prune`` (a
forward pre-hook multiplies ``weight_orig`` by the mask) compute a layer's weight anew at every
call. Every method explains such a model as the plain model with the weights it computes, and
leaves it as it was. Integrative CAM named the stages of those layers ``conv2d#1``, ... (in
``LayerMaps.names`` and its messages): it knew a convolution by its weight tensor, which was
another one at every call; it names them by their module now.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.utils.parametrize as parametrize
import torchvision
from torch import nn
from torch.nn.utils import parametrizations, prune

from ctc_plugin import (
    IntegrativeCAM,
)

from .every_method import METHODS, explain, model_state

CLASSES = 5
SIZE = 16

pytestmark = pytest.mark.filterwarnings(
    "ignore:the explainer has not been trained:UserWarning",
    "ignore:`torch.nn.utils.(weight|spectral)_norm` is deprecated:FutureWarning",
)


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, CLASSES),
    )  # fmt: skip
    model[1].running_mean.uniform_(-0.2, 0.2)
    model[1].running_var.uniform_(0.5, 1.5)
    return model.eval()


class Twice(nn.Module):
    """A parametrization of one's own."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """Twice the stored weight."""
        return 2 * weight


def _pruned(model: nn.Sequential) -> None:
    prune.l1_unstructured(model[0], "weight", amount=0.3)
    prune.random_structured(model[3], "weight", amount=0.25, dim=0)


CHANGES = {
    "weight_norm": lambda m: [parametrizations.weight_norm(m[i]) for i in (0, 3, 7)],
    "spectral_norm": lambda m: [parametrizations.spectral_norm(m[i]) for i in (3, 7)],
    "orthogonal": lambda m: parametrizations.orthogonal(m[7]),
    "own parametrization": lambda m: parametrize.register_parametrization(m[0], "weight", Twice()),
    "hook-style weight_norm": lambda m: nn.utils.weight_norm(m[0]),
    "hook-style spectral_norm": lambda m: nn.utils.spectral_norm(m[3]),
    "pruned": _pruned,
    "pruned, then prune.remove": lambda m: (
        _pruned(m), prune.remove(m[0], "weight"), prune.remove(m[3], "weight")
    ),
}  # fmt: skip


def _changed(change: str, images: torch.Tensor) -> tuple[nn.Module, nn.Module]:
    """The changed model, and the plain one with the weights it computes."""
    model = _model()
    CHANGES[change](model)
    model.eval()
    with torch.no_grad():
        model(images)  # the hook-style forms make their weight in the first call
    plain = _model()
    with torch.no_grad():
        for index in (0, 3, 7):
            plain[index].weight.copy_(model[index].weight)
    return model, plain


@pytest.mark.parametrize("change", CHANGES)
@pytest.mark.parametrize("method", METHODS)
def test_explained_as_the_plain_model_and_left_as_it_was(method, change):
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    model, plain = _changed(change, images)
    before = model_state(model)
    torch.testing.assert_close(
        explain(method, model, images, CLASSES),
        explain(method, plain, images, CLASSES),
        rtol=1e-5,
        atol=1e-6,
    )
    after = model_state(model)
    assert after[0] == before[0]
    for key, value in before[1].items():
        assert torch.equal(after[1][key], value), key


@pytest.mark.parametrize("change", CHANGES)
def test_integrative_cam_names_the_stages_by_their_module(change):
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    model, _ = _changed(change, images)
    _, layers = IntegrativeCAM(model).attribute(images, [0, 1], return_layer_maps=True)
    assert layers.names == ["0", "3"]


def test_integrative_cam_names_resnet_stages_under_weight_norm():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=CLASSES).eval()
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    expected = IntegrativeCAM(model).attribute(images, 0, return_layer_maps=True)[1].names
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            parametrizations.weight_norm(module)
    names = IntegrativeCAM(model).attribute(images, 0, return_layer_maps=True)[1].names
    assert names == expected
