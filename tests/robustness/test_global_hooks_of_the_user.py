"""Every method while global module hooks of the user's are registered.

``torch.nn.modules.module.register_module_forward_hook`` hooks every module of every model. One
that only records changes no result. One that returns another output changes the model's
result: CTC follows what it computes as part of the model, as it follows a module's own hook;
Integrative CAM, which refuses a module's own hook that replaces an output, let the global one
through (a hook returning ``output * 1.0`` on a convolution cut its stage before the BatchNorm:
0.26 off the fused map). It refuses it the same way, and removes its own hooks.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_registry

from .every_method import LIBRARY_METHODS, explain

CLASSES = 4


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, CLASSES),
    ).eval()  # fmt: skip


class Doubled(nn.Module):
    """The model with what the hook below does built in: the first convolution's output x2."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The scores."""
        return self.model[1:](self.model[0](x) * 2)


METHODS = LIBRARY_METHODS


@pytest.mark.parametrize("method", METHODS)
def test_a_recording_global_hook_changes_no_result(method):
    model, images = _model(), torch.rand(2, 3, 16, 16)
    expected = explain(method, model, images, CLASSES)
    seen = []
    handle = module_registry.register_module_forward_hook(lambda m, a, o: seen.append(type(m)))
    try:
        actual = explain(method, model, images, CLASSES)
    finally:
        handle.remove()
    assert seen
    torch.testing.assert_close(actual, expected)


def test_integrative_cam_refuses_a_global_hook_that_replaces_an_output():
    model, images = _model(), torch.rand(2, 3, 16, 16)
    first = model[0]

    def doubles(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        return output * 2 if module is first else None

    handle = module_registry.register_module_forward_hook(doubles)
    try:
        hooks = list(module_registry._global_forward_hooks)
        with pytest.raises(ValueError, match=r"global forward hook .* on 0 \(Conv2d\) replaces"):
            explain("integrative-cam", model, images, CLASSES)
        assert list(module_registry._global_forward_hooks) == hooks  # ours are gone
        # CTC follows the hook's operations as the model's
        expected = explain("ctc-proportional", Doubled(_model()), images, CLASSES)
        torch.testing.assert_close(explain("ctc-proportional", model, images, CLASSES), expected)
    finally:
        handle.remove()
    explain("integrative-cam", model, images, CLASSES)  # and runs without it
