"""What Integrative CAM receives of each stage, for the tests that check stages by hand."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ctc_plugin import IntegrativeCAM


def received_stage_maps(model: nn.Module, x: Tensor, target: int) -> list[tuple[Tensor, Tensor]]:
    """Each stage's ``(map, gradient)`` as Integrative CAM receives them, in forward order."""
    seen: list[tuple[Tensor, Tensor]] = []

    def record(grad: Tensor, act: Tensor) -> Tensor:
        seen.append((act.clone(), grad.clone()))
        return torch.ones(act.shape[0], dtype=act.dtype)

    IntegrativeCAM(model, phi="identity", layer_weights=record).attribute(x, target)
    return seen[::-1]  # the gradients arrive last block first
