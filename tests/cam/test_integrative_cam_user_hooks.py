"""Integrative CAM and forward hooks of the user's on the model's layers.

The stages are traced through the functions the layers call. A hook that only records leaves
the maps as they are; one that replaces a layer's output (a channel mask for pruning) changed
the model behind the tracer, and the map came out as the model's without the hook (0.19 off on
the reviewer's network): it is refused.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin.cam import IntegrativeCAM


def _network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4),
    ).eval()  # fmt: skip


def _hook_counts(model: nn.Module) -> list[int]:
    return [len(module._forward_hooks) for module in model.modules()]


def test_a_recording_hook_leaves_the_map_as_it_is():
    model, images = _network(), torch.rand(2, 3, 16, 16)
    expected = IntegrativeCAM(model).attribute(images, target=1)
    seen = []
    model[2].register_forward_hook(lambda module, args, output: seen.append(output.shape))
    counts = _hook_counts(model)
    torch.testing.assert_close(IntegrativeCAM(model).attribute(images, target=1), expected)
    assert seen and _hook_counts(model) == counts


def test_a_hook_that_replaces_a_layers_output_is_refused_and_removed_with_ours():
    model, images = _network(), torch.rand(2, 3, 16, 16)
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])[None, :, None, None]
    model[2].register_forward_hook(lambda module, args, output: output * keep)
    counts = _hook_counts(model)
    with pytest.raises(ValueError, match=r"forward hook on 2 \(Conv2d\) replaces its output"):
        IntegrativeCAM(model).attribute(images, target=1)
    assert _hook_counts(model) == counts


def test_a_chosen_convolution_whose_output_a_hook_scales_is_refused():
    """Its map would be the hooked output's but its bias term the convolution's own."""
    model, images = _network(), torch.rand(2, 3, 16, 16)
    model[2].register_forward_hook(lambda module, args, output: 2 * output)
    with pytest.raises(ValueError, match=r"forward hook on 2 \(Conv2d\) replaces its output"):
        IntegrativeCAM(model, layers=[model[2]]).attribute(images, target=1)
