"""Each stage's map in score units, and its weight in the fused map.

Integrative CAM adds two terms per stage: the Grad-CAM++ channel term, which has no fixed
unit, and the FullGrad bias map, a share of the target score. `calibrate` scales the channel
term so that its sum carries the rest of the stage's share (`stage_rest`: what flows through
the stage's units minus the bias map's sum). The fused map is then a weighted mean of the
stage maps; a `LayerScore` gives each stage's weight per example (`adaptive_layer_score`, the
default, or a callable of the user's, checked by `check_layer_score`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: A layer score: ``score(grad, act) -> (N,)`` tensor of non-negative weights.
LayerScore = Callable[[Tensor, Tensor], Tensor]


def adaptive_layer_score(grad: Tensor, act: Tensor) -> Tensor:
    """The default layer score: ``mean over (C, H, W) of ReLU(grad * act)``, shape (N,).

    It is large for layers whose units push the target score up (gradient times activation,
    each unit's first-order share of the score, where it is positive). On a stage that ends in
    a ReLU (``act >= 0``) it is ``mean(ReLU(grad) * act)``: units both active and pushing the
    score up. It is never negative, also on stages whose activations can be (a transformer's
    tokens, a BatchNorm output before SiLU).
    """
    return (grad * act).clamp_min_(0).sum(dim=tuple(range(1, act.dim()))) / act[0].numel()


def check_layer_score(score: object, stage: str, examples: int) -> None:
    """Refuse what a ``layer_weights`` callable returned unless it is ``examples`` scores >= 0.

    The fused map is a weighted mean of the stage maps: a negative weight would subtract a
    stage, a NaN would spread over the whole map.

    Raises:
        TypeError: If it is no tensor.
        ValueError: If it holds another number of scores, or a negative or non-finite one.
    """
    if not isinstance(score, Tensor):
        raise TypeError(
            f"layer_weights returned a {type(score).__name__} for stage {stage!r}; it must "
            f"return a tensor of shape (N,) = ({examples},), one score per example"
        )
    if score.numel() != examples:
        raise ValueError(
            f"layer_weights returned {score.numel()} values for stage {stage!r}; it must "
            f"return one score per example ({examples})"
        )
    bad = ~torch.isfinite(score) | (score < 0)
    if bool(bad.any()):
        raise ValueError(
            f"layer_weights returned {score[bad].tolist()} for stage {stage!r}; layer scores "
            "must be finite and non-negative (they weight a mean of the stage maps): clamp "
            "them, e.g. score(grad, act).clamp_min(0)"
        )


def calibrate(channel_map: Tensor, contribution: Tensor) -> Tensor:
    """Rescale each example's channel map so that the magnitude of its sum is ``|contribution|``.

    The Grad-CAM++ channel term has no fixed unit (its alpha divides by ``sum(A)``), while a
    FullGrad bias map is a share of the score. Before the two are added, the channel map is
    scaled by the positive factor ``|contribution| / |sum(map)|``, so that its sum carries the
    rest of the stage's share of the score in magnitude: ``sum(g * A)`` (what flows through the
    stage's units) minus the bias map's sum. The map keeps its sign (a map with a negative sum,
    as a stage without a ReLU may give, sums to ``-|contribution|``), so channel map plus bias
    map sum to ``sum(g * A)`` only where both are positive. A map summing to zero is kept as it
    is.

    Args:
        channel_map: ``sum_k w_k A_k``, shape (N, H, W).
        contribution: ``sum(g * A)`` per example, shape (N,).
    """
    total = channel_map.sum(dim=(1, 2))
    safe = torch.where(total == 0, torch.ones_like(total), total.abs())
    scale = torch.where(total == 0, torch.ones_like(total), contribution.abs() / safe)
    return channel_map * scale.reshape(-1, 1, 1)


#: Roundings (machine epsilons of the stage's dtype, of the sum of magnitudes) within which a
#: stage's rest is 0.
ROUNDINGS = 1


def stage_rest(grad: Tensor, act: Tensor, bias: Tensor) -> Tensor:
    """``sum(g * A) - sum(B)`` per example, where a rest that cancels is 0.

    The rest is exactly 0 for a stage whose output only feeds a normalisation and that has no
    bias (ConvNeXt's stem before its LayerNorm, as freshly built); summed in the stage's dtype
    it comes out as rounding noise that depends on the batch (how the sum is blocked), and
    calibrating by it made the stage's map depend on the other images of the batch. The sums
    are taken in float64, where that noise is far below one rounding of the stage's dtype, and
    a rest within ``ROUNDINGS`` roundings of ``sum(|g * A|) + sum(|B|)`` is taken as the 0 it
    cannot be told from.
    """
    wide = torch.float64 if grad.device.type != "mps" else torch.float32  # MPS has no float64
    g, a, b = grad.to(wide), act.to(wide), bias.to(wide)
    rest = per_example_dot(g, a) - b.sum(dim=(1, 2))
    magnitude = per_example_dot(g.abs(), a.abs()) + b.abs().sum(dim=(1, 2))
    tolerance = ROUNDINGS * torch.finfo(grad.dtype).eps * magnitude
    return torch.where(rest.abs() <= tolerance, torch.zeros_like(rest), rest).to(grad.dtype)


def per_example_dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-example dot product of two (N, ...) tensors, without a temporary product tensor."""
    n = a.shape[0]
    return torch.bmm(a.reshape(n, 1, -1), b.reshape(n, -1, 1)).reshape(n)
