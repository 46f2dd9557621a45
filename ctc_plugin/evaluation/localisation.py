"""Localisation metrics: how well an explanation points at the ground-truth evidence.

Every function takes attribution maps shaped ``(N, H, W)``, ``(N, 1, H, W)`` or ``(N, C, H, W)``
(channels are summed) and boolean ground-truth masks ``(N, H, W)`` or ``(N, 1, H, W)``, and returns
one score per image as a float64 ``(N,)`` tensor. An image whose mask is empty scores NaN, as in
Quantus, because no answer can be right or wrong there.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ctc_plugin.evaluation.arguments import as_maps, as_masks
from ctc_plugin.inputs import is_integer

__all__ = [
    "pointing_game",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "binarize",
    "iou",
    "f1",
]


def _nan_where_empty(scores: Tensor, masks: Tensor) -> Tensor:
    empty = masks.flatten(1).sum(dim=1) == 0
    return scores.masked_fill(empty, float("nan"))


def pointing_game(
    attributions: Tensor | np.ndarray, masks: Tensor | np.ndarray, tolerance: int = 0
) -> Tensor:
    """Pointing game (Zhang et al., 2018): 1 if the map's maximum lies on the evidence, else 0.

    When several pixels share the maximum, a hit on any of them counts (as in Quantus). A
    constant map (all zero, say) has no maximum to point with and scores a miss, 0 (Quantus
    would count it a hit, since every pixel ties for the maximum), and so does a map without
    a positive value: it points at no evidence for the class (a map that is 0 but for a
    negative blob would otherwise hit wherever a 0 lies on the evidence, and a sparse
    surrogate's maps are often such).

    Args:
        attributions: Attribution maps.
        masks: Ground-truth evidence masks.
        tolerance: Grow each mask by this many pixels (Chebyshev distance) before testing; the
            original paper used 15 pixels at ImageNet resolution, Quantus uses 0.

    Returns:
        ``(N,)`` float64 tensor of 0/1 hits (0 for a constant map and one without a positive
        value), NaN where a mask is empty.

    Raises:
        ValueError: For maps and masks of different shapes, maps holding NaN or infinity, or a
            tolerance that is not a non-negative int.
    """
    maps = as_maps(attributions)
    gt = as_masks(masks, maps.shape)
    if not is_integer(tolerance):
        raise ValueError(f"tolerance must be an int number of pixels, got {tolerance!r}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    tolerance = int(tolerance)
    grown = gt
    if tolerance > 0:
        size = 2 * tolerance + 1
        grown = F.max_pool2d(gt[:, None].float(), size, stride=1, padding=tolerance)[:, 0] > 0
    flat = maps.flatten(1)
    peak = flat.max(dim=1, keepdim=True).values
    at_max = flat == peak
    # a constant map points nowhere, nor does one with no positive value
    points = (flat != peak).any(dim=1) & (peak[:, 0] > 0)
    hits = ((at_max & grown.flatten(1)).any(dim=1) & points).to(torch.float64)
    return _nan_where_empty(hits, gt)


def relevance_mass_accuracy(
    attributions: Tensor | np.ndarray,
    masks: Tensor | np.ndarray,
    positive_only: bool = True,
) -> Tensor:
    """Relevance mass accuracy (Arras et al., 2022): share of relevance inside the evidence.

    Args:
        attributions: Attribution maps.
        masks: Ground-truth evidence masks.
        positive_only: Count only positive relevance, as Arras et al. do (then the score lies in
            [0, 1]). ``False`` uses the raw sum, as Quantus does when ``abs=False``; the ratio can
            then leave [0, 1].

    Returns:
        ``(N,)`` float64 tensor; NaN where a mask is empty or the total relevance is zero.
    """
    maps = as_maps(attributions)
    gt = as_masks(masks, maps.shape)
    if positive_only:
        maps = maps.clamp(min=0)
    inside = (maps * gt).flatten(1).sum(dim=1)
    total = maps.flatten(1).sum(dim=1)
    ratio = torch.where(total != 0, inside / total.where(total != 0, 1.0), float("nan"))
    return _nan_where_empty(ratio, gt)


def relevance_rank_accuracy(
    attributions: Tensor | np.ndarray, masks: Tensor | np.ndarray
) -> Tensor:
    """Relevance rank accuracy (Arras et al., 2022): share of the top-K pixels inside the evidence.

    K is the size of each image's mask. Pixels tied at the K-th value share the places left
    among the top K in proportion: each place counts the share of the tied pixels inside the
    evidence, the expected score under a random order of the ties. A map constant over
    segments (CTC's, any feature-level method's) then scores the same when the image and its
    mask are flipped, where an order by pixel position would favour evidence near the top;
    a constant map scores the evidence's share of the image. Without ties it is the plain
    share of the top K, as Quantus computes it.

    Args:
        attributions: Attribution maps.
        masks: Ground-truth evidence masks.

    Returns:
        ``(N,)`` float64 tensor in [0, 1], NaN where a mask is empty.
    """
    maps = as_maps(attributions)
    gt = as_masks(masks, maps.shape)
    flat, flat_gt = maps.flatten(1), gt.flatten(1)
    scores = torch.empty(len(flat), dtype=torch.float64)
    for i, (values, inside) in enumerate(zip(flat, flat_gt)):
        k = int(inside.sum())
        if k == 0:
            scores[i] = float("nan")
            continue
        kth = torch.topk(values, k).values[-1]
        above, tied = values > kth, values == kth
        places = k - int(above.sum())  # places of the top K that the tied pixels share
        tied_inside = inside[tied].double().sum() / int(tied.sum())
        scores[i] = (inside[above].double().sum() + places * tied_inside) / k
    return scores


def binarize(
    attributions: Tensor | np.ndarray,
    threshold: float = 0.5,
    mode: Literal["relative", "quantile"] = "relative",
) -> Tensor:
    """Threshold attribution maps into boolean ``(N, H, W)`` masks.

    Args:
        attributions: Attribution maps.
        threshold: With ``mode="relative"``, keep pixels with value >= ``threshold`` times the
            map's maximum (the map must have a positive maximum to keep anything). With
            ``mode="quantile"``, keep pixels at or above the ``threshold`` quantile of the map.
        mode: ``"relative"`` or ``"quantile"``.

    Returns:
        Boolean ``(N, H, W)`` tensor.

    Raises:
        ValueError: ``threshold`` outside [0, 1] or an unknown ``mode``.
    """
    maps = as_maps(attributions)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    flat = maps.flatten(1)
    if flat.numel() == 0:  # no images (or no pixels): nothing to keep
        if mode not in ("relative", "quantile"):
            raise ValueError(f"mode must be 'relative' or 'quantile', got {mode!r}")
        return torch.zeros(maps.shape, dtype=torch.bool)
    if mode == "relative":
        peak = flat.max(dim=1, keepdim=True).values
        keep = (flat >= threshold * peak) & (peak > 0)
    elif mode == "quantile":
        cut = torch.quantile(flat, threshold, dim=1, keepdim=True)
        keep = flat >= cut
    else:
        raise ValueError(f"mode must be 'relative' or 'quantile', got {mode!r}")
    return keep.reshape(maps.shape)


def _confusion(predicted: Tensor | np.ndarray, masks: Tensor | np.ndarray) -> tuple[Tensor, ...]:
    pred = as_masks(predicted, torch.Size(as_maps(predicted, "predicted").shape), "predicted")
    gt = as_masks(masks, pred.shape)
    tp = (pred & gt).flatten(1).sum(dim=1).to(torch.float64)
    fp = (pred & ~gt).flatten(1).sum(dim=1).to(torch.float64)
    fn = (~pred & gt).flatten(1).sum(dim=1).to(torch.float64)
    return tp, fp, fn, gt


def iou(predicted: Tensor | np.ndarray, masks: Tensor | np.ndarray) -> Tensor:
    """Intersection over union of predicted masks (e.g. from `binarize`) and the evidence.

    Args:
        predicted: Predicted masks: bool, or numbers where non-zero means inside; a
            floating-point tensor must hold only 0 and 1 (an attribution map is refused:
            threshold it with `binarize` first).
        masks: Ground-truth evidence masks.

    Returns:
        ``(N,)`` float64 tensor in [0, 1], NaN where the ground-truth mask is empty.
    """
    tp, fp, fn, gt = _confusion(predicted, masks)
    union = tp + fp + fn
    return _nan_where_empty(tp / union.clamp(min=1), gt)


def f1(predicted: Tensor | np.ndarray, masks: Tensor | np.ndarray) -> Tensor:
    """F1 score (Dice) of predicted masks (e.g. from `binarize`) against the evidence.

    Args:
        predicted: Predicted masks, as for `iou` (a floating-point map other than 0 and 1 is
            refused: threshold it with `binarize` first).
        masks: Ground-truth evidence masks.

    Returns:
        ``(N,)`` float64 tensor in [0, 1], NaN where the ground-truth mask is empty.
    """
    tp, fp, fn, gt = _confusion(predicted, masks)
    denominator = 2 * tp + fp + fn
    return _nan_where_empty(2 * tp / denominator.clamp(min=1), gt)
