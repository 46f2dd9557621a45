"""Normalise per-layer maps and fuse them as they arrive, keeping only a running sum.

The normalisation is pytorch-grad-cam's: per example, subtract the minimum and divide by
``1e-7 + max``. Maps are upsampled bilinearly (``align_corners=False``, the pixel-centre
convention of ``cv2.resize`` that pytorch-grad-cam uses) to the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: Added to the maximum in the min-max normalisation, as in pytorch-grad-cam's ``scale_cam_image``.
NORM_EPS = 1e-7


def minmax(maps: Tensor) -> Tensor:
    """Scale each example's map to [0, 1]: ``(m - min) / (1e-7 + max(m - min))``.

    Args:
        maps: Shape (N, ...); each example is normalised on its own.
    """
    flat = maps.reshape(maps.shape[0], -1)
    shifted = flat - flat.min(dim=1, keepdim=True).values
    scaled = shifted / (NORM_EPS + shifted.max(dim=1, keepdim=True).values)
    return scaled.reshape(maps.shape)


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize (N, 1, h, w) maps to ``size`` bilinearly; maps already that size are returned."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


class RunningFusion:
    """Accumulate ``sum_l score_l * map_l`` and ``sum_l score_l`` one layer at a time.

    The fused map is ``minmax(sum_l score_l Up(map_l) / sum_l score_l)`` per example; where an
    example's scores sum to zero (no layer has positive evidence), the layers are averaged
    uniformly instead. Upsampling is linear, so maps of the same resolution are summed first and
    upsampled once per resolution (five times for a ResNet rather than once per layer).

    Args:
        size: The output resolution (H, W).
        keep_maps: Also keep every layer's map and score (for ``return_layer_maps``).
    """

    def __init__(self, size: tuple[int, int], keep_maps: bool = False) -> None:
        self.size = size
        self.keep_maps = keep_maps
        self.weighted: dict[tuple[int, int], Tensor] = {}
        self.uniform: dict[tuple[int, int], Tensor] = {}
        self.score_sum: Tensor | None = None
        self.count = 0
        self.maps: dict[int, Tensor] = {}
        self.scores: dict[int, Tensor] = {}

    @staticmethod
    def _accumulate(store: dict[tuple[int, int], Tensor], value: Tensor) -> None:
        key = (int(value.shape[-2]), int(value.shape[-1]))
        store[key] = value.clone() if key not in store else store[key].add_(value)

    def add(self, index: int, layer_map: Tensor, score: Tensor | None) -> None:
        """Add one layer's normalised map (N, 1, h, w) with its score (N,), or None for 1."""
        self.count += 1
        if score is None:
            score = torch.ones(layer_map.shape[0], dtype=layer_map.dtype, device=layer_map.device)
            self._accumulate(self.weighted, layer_map)
        else:
            self._accumulate(self.weighted, layer_map * score.reshape(-1, 1, 1, 1))
            self._accumulate(self.uniform, layer_map)
        self.score_sum = score.clone() if self.score_sum is None else self.score_sum + score
        if self.keep_maps:
            self.maps[index], self.scores[index] = layer_map, score

    def _upsampled_sum(self, store: dict[tuple[int, int], Tensor]) -> Tensor:
        return torch.stack([upsample(m, self.size) for m in store.values()]).sum(dim=0)

    def result(self) -> Tensor:
        """Return the fused, min-max normalised map (N, 1, H, W).

        Raises:
            RuntimeError: If no layer map was added.
        """
        if self.score_sum is None:
            raise RuntimeError("no layer map was added")
        fallback = self.score_sum <= 0
        safe = torch.where(fallback, torch.ones_like(self.score_sum), self.score_sum)
        fused = self._upsampled_sum(self.weighted) / safe.reshape(-1, 1, 1, 1)
        if self.uniform and bool(fallback.any()):
            uniform = self._upsampled_sum(self.uniform) / self.count
            fused = torch.where(fallback.reshape(-1, 1, 1, 1), uniform, fused)
        return minmax(fused)

    def layer_map(self, index: int) -> Tensor | None:
        """Return a kept layer map upsampled to the output size, or None if it never arrived."""
        layer_map = self.maps.get(index)
        return None if layer_map is None else upsample(layer_map, self.size)

    def layer_weights(self, indices: list[int], n: int) -> Tensor:
        """Return the weight each example gave each layer, shape (N, L), rows summing to 1.

        Layers that received no gradient get weight 0.
        """
        if self.score_sum is None:
            raise RuntimeError("no layer map was added")
        fallback = self.score_sum <= 0
        columns = [
            torch.zeros_like(self.score_sum)
            if index not in self.scores
            else torch.where(fallback, 1.0 / self.count, self.scores[index] / self.score_sum)
            for index in indices
        ]
        return torch.stack(columns, dim=1).reshape(n, len(indices))
