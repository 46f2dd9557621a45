"""Faithfulness: deletion and insertion curves (MoRF / LeRF) at pixel or segment granularity.

Deletion replaces the most (MoRF) or least (LeRF) relevant parts of the image with a baseline,
step by step, and records the model's score for the target class; insertion starts from the
baseline and reveals the image in the same order (Petsiuk et al., 2018; Samek et al., 2017). With
a ``feature_mask``, whole features (segments) move at once, ranked by their mean relevance
(as IROF does, Rieger & Hansen 2020). The x axis is always the fraction of the image area
replaced (deletion) or revealed (insertion), so pixel and segment curves share one grid.

A good explanation gives a *low* MoRF-deletion AUC, a *high* MoRF-insertion AUC, and a *high*
LeRF-deletion AUC.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from ctc_plugin.evaluation.arguments import (
    as_maps,
    check_count,
    check_images,
    is_probability_output,
    model_targets,
    target_renamed,
)

__all__ = ["PerturbationCurve", "perturbation_curve", "resolve_baseline"]

Baseline = float | Tensor | Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class PerturbationCurve:
    """Scores of the target class as the image is perturbed step by step.

    Attributes:
        fractions: ``(S + 1,)`` fraction of the image area replaced (deletion) or revealed
            (insertion) at each step, from 0 to 1.
        scores: ``(N, S + 1)`` target-class score (probability or logit) per image and step.
        mode: ``"deletion"`` or ``"insertion"``.
        order: ``"morf"`` (most relevant first) or ``"lerf"`` (least relevant first).
    """

    fractions: Tensor
    scores: Tensor
    mode: str
    order: str

    def auc(self) -> Tensor:
        """Return the area under each image's curve (trapezoid rule), a ``(N,)`` tensor."""
        return torch.trapezoid(self.scores, self.fractions, dim=1)


def resolve_baseline(baseline: Baseline, images: Tensor) -> Tensor:
    """Return the baseline as a tensor shaped like ``images``.

    Args:
        baseline: A number, a tensor broadcastable to ``images`` (``(C, H, W)``, ``(1, C, H, W)``
            or ``(N, C, H, W)``), or a callable mapping the images to their baseline (for
            example a blurred copy).
        images: ``(N, C, H, W)`` images.

    Raises:
        ValueError: when the baseline cannot be broadcast to the images.
    """
    if callable(baseline):
        value = baseline(images)
    elif isinstance(baseline, numbers.Real):  # Python and NumPy numbers alike
        value = torch.tensor(float(baseline), dtype=torch.float64)  # rounded once, to theirs
    else:
        value = baseline
    if not isinstance(value, Tensor):
        raise TypeError(f"baseline must be a number, tensor or callable; got {type(value)}")
    try:
        resolved = torch.broadcast_to(value.to(images), images.shape).clone()
    except RuntimeError as error:
        raise ValueError(
            f"baseline of shape {tuple(value.shape)} does not broadcast to the images' shape "
            f"{tuple(images.shape)}"
        ) from error
    if not bool(resolved.isfinite().all()):
        raise ValueError(
            "baseline holds NaN or infinite values: the model's scores on the perturbed images "
            "would be too; give a finite baseline"
        )
    return resolved


def _ranks(relevance: Tensor, descending: bool, generator: torch.Generator) -> Tensor:
    """Rank of each entry (0 = first to move); ties are broken at random.

    The least-relevant-first order is the most-relevant-first one reversed, tie-breaking
    included, so LeRF deletion keeps exactly what MoRF insertion reveals (with the same seed).
    """
    shuffle = torch.randperm(relevance.numel(), generator=generator)
    order = torch.sort(relevance[shuffle], descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks[shuffle[order]] = torch.arange(order.numel())
    return ranks if descending else order.numel() - 1 - ranks


def _pixel_counts(pixels: int, steps: int) -> Tensor:
    """How many pixels are moved after each of ``steps`` equal steps, ``(steps + 1,)``.

    The nearest whole numbers to ``k * pixels / steps``, symmetric (``counts[k] +
    counts[steps - k] = pixels``, so LeRF and MoRF curves mirror step by step; only the middle
    step of an even number of steps over an odd number of pixels cannot be).
    """
    counts = torch.round(torch.linspace(0, pixels, steps + 1, dtype=torch.float64)).long()
    half = steps // 2 + 1
    counts[half:] = pixels - counts[: steps + 1 - half].flip(0)
    return counts


def _pixel_steps(
    relevance: Tensor, steps: int, descending: bool, generator: torch.Generator
) -> Tensor:
    """Boolean (S+1, H, W) sets of moved pixels (`_pixel_counts` of them per step)."""
    ranks = _ranks(relevance.flatten(), descending, generator).reshape(relevance.shape)
    counts = _pixel_counts(relevance.numel(), steps)
    return ranks[None] < counts[:, None, None]


def _segment_steps(
    relevance: Tensor, features: Tensor, descending: bool, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Boolean (K+1, H, W) sets of moved pixels (one more feature per step) and area fractions."""
    ids, inverse = torch.unique(features, return_inverse=True)
    sums = torch.zeros(len(ids), dtype=torch.float64).index_add_(
        0, inverse.flatten(), relevance.flatten()
    )
    sizes = torch.bincount(inverse.flatten(), minlength=len(ids)).double()
    feature_rank = _ranks(sums / sizes, descending, generator)
    pixel_rank = feature_rank[inverse]
    moved = pixel_rank[None] < torch.arange(len(ids) + 1)[:, None, None]
    return moved, moved.flatten(1).double().mean(dim=1)


def _feature_masks(feature_mask: Tensor, n: int, height: int, width: int) -> Tensor:
    """Return feature ids as ``(N, H, W)``, from Captum's ``(N|1, 1, H, W)`` layout.

    Raises:
        ValueError: when the mask is not a tensor of that shape.
    """
    if not isinstance(feature_mask, Tensor):
        raise ValueError(f"feature_mask must be a tensor, got {type(feature_mask).__name__}")
    if (
        feature_mask.dim() != 4
        or tuple(feature_mask.shape[1:]) != (1, height, width)
        or feature_mask.shape[0] not in (1, n)
    ):
        raise ValueError(
            f"feature_mask must have shape (N, 1, H, W) = {(n, 1, height, width)} or "
            f"(1, 1, H, W) = {(1, 1, height, width)} with integer ids, matching the images; "
            f"got {tuple(feature_mask.shape)}"
        )
    if feature_mask.is_floating_point() or feature_mask.is_complex():
        raise ValueError(
            f"feature_mask must hold integer feature ids, got dtype {feature_mask.dtype}; cast a "
            "label map with .long()"
        )
    return feature_mask.expand(n, 1, height, width)[:, 0].cpu()


def _score(model: nn.Module, batch: Tensor, target: int, output: str) -> Tensor:
    """The target's probability (the softmax of the logits) or logit of each image of ``batch``.

    Raises:
        ValueError: With ``output="probability"``, for a model whose output is already
            probabilities: a second softmax would squeeze every curve towards ``1 / classes``;
            and for a model with one output, whose softmax is 1 for every image.
    """
    logits = model(batch)
    if output != "probability":
        return logits[:, target]
    if logits.shape[1] == 1:
        raise ValueError(
            "the model has one output, and output='probability' takes the softmax over the "
            "outputs, which is 1 for every image: every curve would be flat at 1; pass "
            "output='logit' (or a model with one output per class)"
        )
    if is_probability_output(logits):
        raise ValueError(
            "the model's output is already probabilities (its rows are non-negative and sum "
            "to 1), and output='probability' takes the softmax of the model's logits: a "
            "second one would squeeze every curve towards 1 / classes; pass the model "
            "without its final softmax, or output='logit' to read its output as it is"
        )
    return torch.softmax(logits, dim=1)[:, target]


@target_renamed
def perturbation_curve(
    model: nn.Module,
    images: Tensor,
    target: Tensor | int | list[int],
    attributions: Tensor | np.ndarray,
    mode: Literal["deletion", "insertion"] = "deletion",
    order: Literal["morf", "lerf"] = "morf",
    feature_mask: Tensor | None = None,
    baseline: Baseline = 0.0,
    steps: int = 20,
    output: Literal["probability", "logit"] = "probability",
    batch_size: int = 64,
    seed: int = 0,
) -> PerturbationCurve:
    """Compute deletion or insertion curves for a batch of explanations.

    Args:
        model: Classifier returning logits ``(N, classes)``; called under ``torch.no_grad``.
        images: ``(N, C, H, W)`` inputs, in the space the model takes.
        target: Class explained per image (an int for all).
        attributions: Maps ``(N, [C,] H, W)``; channels are summed.
        mode: ``"deletion"`` replaces image content by the baseline; ``"insertion"`` starts from
            the baseline and reveals the image.
        order: ``"morf"`` moves the most relevant pixels/features first, ``"lerf"`` the least.
        feature_mask: Integer ids ``(N, 1, H, W)`` or ``(1, 1, H, W)`` (Captum's layout) for
            segment granularity; ``None`` moves single pixels.
        baseline: Value of removed content: a number, a broadcastable tensor, or a callable of
            the images (see `resolve_baseline`).
        steps: Number of steps at pixel granularity (the curve has ``steps + 1`` points); segment
            curves are measured after each feature and linearly interpolated onto this grid.
        output: Score recorded: softmax ``"probability"`` of the target or its ``"logit"``.
        batch_size: Perturbed copies per forward pass.
        seed: Seed of the random tie-breaking between equal relevances. Every image breaks
            its ties with its own generator seeded by ``seed``, so an image's curve does not
            depend on the other images in the call (batch size, order).

    Returns:
        A `PerturbationCurve`; call ``.auc()`` for the per-image areas.

    Raises:
        ValueError: For bad arguments, and with ``output="probability"`` for a model whose
            output is already probabilities (a softmax of them would be taken again) or that
            has one output (its softmax is 1 for every image).
    """
    images = check_images(images)
    maps = as_maps(attributions)  # on the CPU, where the moved pixel sets are built
    n, _, height, width = images.shape
    if tuple(maps.shape) != (n, height, width):
        raise ValueError(
            f"attributions must match the images: expected (N, H, W) = {(n, height, width)}, "
            f"got {tuple(maps.shape)}"
        )
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' or 'lerf', got {order!r}")
    if output not in ("probability", "logit"):
        raise ValueError(f"output must be 'probability' or 'logit', got {output!r}")
    steps, batch_size = check_count(steps, "steps"), check_count(batch_size, "batch_size")
    seed = check_count(seed, "seed", least=0)
    labels = model_targets(model, images, target)
    masks = None if feature_mask is None else _feature_masks(feature_mask, n, height, width)
    base = resolve_baseline(baseline, images)
    grid = _pixel_counts(height * width, steps).double() / (height * width)  # the moved area
    descending = order == "morf"
    curves = torch.empty(n, steps + 1, dtype=torch.float64)
    with torch.no_grad():
        for i in range(n):
            # one generator per image: its ties are broken the same way whatever else is in
            # the batch, so a curve does not depend on the batch size or the image's position
            generator = torch.Generator().manual_seed(seed)
            if masks is None:
                moved = _pixel_steps(maps[i], steps, descending, generator)
            else:
                moved, fractions = _segment_steps(maps[i], masks[i], descending, generator)
            moved = moved[:, None].to(images.device)
            if mode == "deletion":
                copies = torch.where(moved, base[i], images[i])
            else:
                copies = torch.where(moved, images[i], base[i])
            scores = torch.cat(
                [_score(model, chunk, int(labels[i]), output) for chunk in copies.split(batch_size)]
            )
            scores = scores.detach().double().cpu()
            if masks is None:
                curves[i] = scores
            else:
                curves[i] = torch.from_numpy(np.interp(grid.numpy(), fractions, scores.numpy()))
    return PerturbationCurve(fractions=grid, scores=curves, mode=mode, order=order)
