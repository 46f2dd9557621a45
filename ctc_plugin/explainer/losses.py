"""The terms of the Explainer objective, one documented function each.

Shapes: ``logits`` of the explainer are ``(N, C, H, W)`` (one map per class), class masks are
their sigmoid, ``targets`` are multi-hot ``(N, C)`` floats (1 = class present). The target mask
``m`` and the non-target mask ``n`` are ``(N, H, W)``. Every function returns a scalar tensor
that can be back-propagated.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

#: Smallest probability in the entropy term (as in the original code).
MIN_PROBABILITY = 1e-16


def target_masks(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Return the target and non-target masks of a batch.

    The target mask is ``sigmoid(max over present classes of the class logits)`` and the
    non-target mask ``sigmoid(max over absent classes)``. An image with no absent class (every
    class present) gets an all-zero non-target mask.

    Args:
        logits: Explainer logits ``(N, C, H, W)``.
        targets: Multi-hot targets ``(N, C)``; every image needs at least one present class.

    Returns:
        ``(m, n)``, each ``(N, H, W)`` in ``[0, 1]``.

    Raises:
        ValueError: An image has no present class in its target.
    """
    present = targets.bool()
    if not present.any(dim=1).all():
        raise ValueError("every image needs at least one present class in its target")
    mask = present[:, :, None, None]
    low = torch.finfo(logits.dtype).min
    target_logit = logits.masked_fill(~mask, low).amax(dim=1)
    nontarget_logit = logits.masked_fill(mask, low).amax(dim=1)
    return target_logit.sigmoid(), nontarget_logit.sigmoid()


def apply_mask(images: Tensor, mask: Tensor, baseline: float | Tensor = 0.0) -> Tensor:
    """Return ``mask * images + (1 - mask) * baseline``.

    With the default ``baseline=0`` this is the original ``m * x``: on a normalised input the
    hidden pixels take the dataset's mean colour.

    Args:
        images: ``(N, C, H, W)``.
        mask: ``(N, H, W)`` in ``[0, 1]``.
        baseline: A number or a tensor broadcastable to ``images``.
    """
    m = mask.unsqueeze(1)
    return m * images + (1.0 - m) * baseline


def classification_loss(logits: Tensor, targets: Tensor, multilabel: bool) -> Tensor:
    """Classification loss of the classifier on the masked image.

    Multi-label targets use binary cross-entropy on the logits (the original for VOC / COCO);
    single-label targets use cross-entropy (the original for CUB).

    Args:
        logits: Classifier logits ``(N, C)`` for the masked images ``m * x``.
        targets: Multi-hot ``(N, C)`` (exactly one 1 per row when ``multilabel`` is False).
        multilabel: Which of the two losses to use.
    """
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
    return F.cross_entropy(logits, targets.argmax(dim=1))


def entropy_loss(logits: Tensor) -> Tensor:
    """Negative mean entropy of the classifier's prediction on the inverse-masked image.

    ``p = softmax(logits)`` clamped at ``1e-16``; the loss is ``-mean(-p * log p)`` over batch
    and classes, as in the original. It is smallest, ``-log(C) / C``, at the uniform
    prediction: minimising it removes the class evidence from ``(1 - m) * x``.

    Args:
        logits: Classifier logits ``(N, C)`` for the inverse-masked images ``(1 - m) * x``.
    """
    p = F.softmax(logits, dim=-1).clamp(min=MIN_PROBABILITY)
    return (p * p.log()).mean()


def total_variation(mask: Tensor) -> Tensor:
    """Anisotropic total variation of masks, averaged over pixels and batch.

    As in the original (a 3x3 difference filter with reflect padding): the absolute right
    difference plus the absolute down difference at every pixel; at the last column / row the
    reflected neighbour makes it repeat the previous difference. A constant mask has zero TV.

    Args:
        mask: ``(N, H, W)`` with ``H, W >= 2``.
    """
    padded = F.pad(mask.unsqueeze(1), (0, 1, 0, 1), mode="reflect").squeeze(1)
    right = (padded[:, :-1, :-1] - padded[:, :-1, 1:]).abs()
    down = (padded[:, :-1, :-1] - padded[:, 1:, :-1]).abs()
    return (right + down).mean()


def area_bounds(num_pixels: int, a_min: float, a_max: float) -> tuple[int, int]:
    """Return how many pixels a class mask should at least / at most cover.

    ``floor(a * num_pixels)`` for both bounds, where ``num_pixels`` is the actual ``H * W`` of
    the images (the original hard-codes 224 x 224).
    """
    return math.floor(a_min * num_pixels + 1e-9), math.floor(a_max * num_pixels + 1e-9)


def area_loss(logits: Tensor, targets: Tensor, a_min: float, a_max: float) -> Tensor:
    """Area hinge on the masks of the present classes.

    For each present class ``c`` of an image, sort ``sigmoid(S_c)`` descending into ``s``;
    ``r_min`` is 1 on the first ``floor(a_min * HW)`` entries and 0 after, ``r_max`` likewise
    with ``a_max``. The class's loss is ``mean(relu(r_min - s) + relu(s - r_max))``: zero
    exactly when at least ``a_min`` and at most ``a_max`` of the image is fully on and the rest
    fully off. Class losses are summed per image and averaged over the batch.

    Args:
        logits: Explainer logits ``(N, C, H, W)``.
        targets: Multi-hot targets ``(N, C)``.
        a_min: Smallest area, fraction of ``H * W``.
        a_max: Largest area, fraction of ``H * W``.
    """
    n, _, h, w = logits.shape
    low, high = area_bounds(h * w, a_min, a_max)
    present = targets.bool()
    image_index = present.nonzero()[:, 0]
    s = logits[present].flatten(1).sigmoid().sort(dim=1, descending=True).values
    rank = torch.arange(h * w, device=logits.device)
    r_min = (rank < low).to(s.dtype)
    r_max = (rank < high).to(s.dtype)
    per_class = (F.relu(r_min - s) + F.relu(s - r_max)).mean(dim=1)
    per_image = torch.zeros(n, dtype=s.dtype, device=s.device).index_add(0, image_index, per_class)
    return per_image.mean()


def mean_area(mask: Tensor) -> Tensor:
    """Mean value of a mask over pixels and batch (the ``lambda_t`` / ``lambda_nc`` terms)."""
    return mask.mean()
