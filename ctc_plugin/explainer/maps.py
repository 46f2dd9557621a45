"""Per-class maps: run a network at a reduced scale, pick one map per image, resize maps back.

The explainer backbones work at a fraction of the input resolution and return one map per
class; these helpers are the shared steps around them. Bilinear resizing acts on each map
alone, so selecting maps before resizing gives the same values as resizing all of them first.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


def check_scale(name: str, value: float) -> float:
    """Return ``value`` as a float if it is a number in (0, 1].

    Raises:
        ValueError: Naming the argument, if it is no number (a string, a bool) or lies outside
            (0, 1].
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value <= 1:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


def run_at_scale(network: nn.Module, images: Tensor, scale: float) -> Tensor:
    """Run ``network`` on ``images`` resized bilinearly by ``scale`` (as they are at 1).

    Raises:
        ValueError: If ``scale`` leaves a side of the images no pixel.
    """
    if scale != 1.0:
        check_scaled_size(images.shape[-2:], scale)
        images = F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
    return network(images)


def check_scaled_size(size: Sequence[int], scale: float) -> None:
    """Refuse a ``scale`` that resizes images of ``size`` (``(H, W)``) to no pixel on a side.

    Resizing by a factor rounds each side down (as ``F.interpolate`` does), so a side below
    ``1 / scale`` pixels would become 0.

    Raises:
        ValueError: Naming both sizes.
    """
    height, width = (int(side) for side in size)
    scaled = (math.floor(height * scale), math.floor(width * scale))
    if min(scaled) < 1:
        raise ValueError(
            f"the explainer's input_scale {scale:g} resizes {height}x{width} images to "
            f"{scaled[0]}x{scaled[1]} pixels, none left on a side: use larger images or a "
            "larger input_scale"
        )


def select_maps(maps: Tensor, target: Tensor) -> Tensor:
    """Return the map of class ``target[i]`` of each example ``i``: ``(N, 1, h, w)``."""
    index = target.to(maps.device).view(-1, 1, 1, 1).expand(-1, 1, *maps.shape[-2:])
    return maps.gather(1, index)


def resize_maps(maps: Tensor, size: tuple[int, ...]) -> Tensor:
    """Resize ``(N, K, h, w)`` maps bilinearly to ``size`` (``(H, W)``) when they differ."""
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
    return maps
