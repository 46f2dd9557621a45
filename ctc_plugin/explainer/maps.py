"""Per-class maps: run a network at a reduced scale, pick one map per image, resize maps back.

The explainer backbones work at a fraction of the input resolution and return one map per
class; these helpers are the shared steps around them. Bilinear resizing acts on each map
alone, so selecting maps before resizing gives the same values as resizing all of them first.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def check_scale(name: str, value: float) -> float:
    """Return ``value`` as a float if it lies in (0, 1].

    Raises:
        ValueError: Naming the argument, if it lies outside (0, 1].
    """
    if not 0 < value <= 1:
        raise ValueError(f"{name} must lie in (0, 1], got {value!r}")
    return float(value)


def run_at_scale(network: nn.Module, images: Tensor, scale: float) -> Tensor:
    """Run ``network`` on ``images`` resized bilinearly by ``scale`` (as they are at 1)."""
    if scale != 1.0:
        images = F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
    return network(images)


def select_maps(maps: Tensor, target: Tensor) -> Tensor:
    """Return the map of class ``target[i]`` of each example ``i``: ``(N, 1, h, w)``."""
    index = target.to(maps.device).view(-1, 1, 1, 1).expand(-1, 1, *maps.shape[-2:])
    return maps.gather(1, index)


def resize_maps(maps: Tensor, size: tuple[int, ...]) -> Tensor:
    """Resize ``(N, K, h, w)`` maps bilinearly to ``size`` (``(H, W)``) when they differ."""
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
    return maps
