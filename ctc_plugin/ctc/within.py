"""Pixel-level CTC: each feature's score distributed over its elements by a relevance map.

CTC scores whole features (segments). To get a map with pixel detail whose per-feature totals
stay exactly the CTC scores, each feature's score is split among its elements in proportion to
the *magnitude* of a relevance map (any Zennit composite, any Captum attribution, any callable
or a precomputed tensor):

``attribution_i = score_S * |R_i| / sum_{j in S} |R_j|``  for every element ``i`` of feature ``S``.

Why magnitudes: signed relevance can sum to (nearly) zero inside a feature, and dividing by
that sum would blow the map up or flip its sign; with magnitudes the weights are non-negative
and sum to one, so the sign of the map is the sign of the feature's CTC score and the
relevance method decides only *where* inside the feature the score sits.

Fallback: a feature whose elements all have zero relevance (or that the relevance method does
not reach) gets its score spread evenly, ``score_S / |S|`` per element, which is also what a
uniform relevance gives. A feature that spans several inputs of a tuple is one feature: its
elements in all inputs share its score.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from zennit.core import Composite

from ctc_plugin.canonizers import gradient_attributor
from ctc_plugin.ctc.masks import FeatureSet, broadcast_to_inputs
from ctc_plugin.targets import resolve_targets

WithinFeature = (
    torch.Tensor
    | tuple[torch.Tensor, ...]
    | Composite
    | Callable[[Any, Any], Any]
    | Any  # a Captum attribution instance
)


def composite_relevance(
    model: torch.nn.Module, composite: Composite, x: torch.Tensor, attr_output: torch.Tensor
) -> torch.Tensor:
    """Relevance of a Zennit composite: Zennit's ``Gradient`` attributor with ``attr_output``.

    The composite's hooks and canonizers are removed when the call ends, also on an exception.

    Args:
        model: The classifier.
        composite: Any Zennit composite (EpsilonPlusFlat, EpsilonGammaBox, ...).
        x: (N, ...) input.
        attr_output: Output weighting, shaped like the model's output (one-hot for a class).

    Returns:
        Relevance shaped like ``x``.
    """
    with gradient_attributor(model, composite) as attributor:
        _, relevance = attributor(x.detach(), attr_output.detach())
    return relevance.detach()


def resolve_relevance(
    within_feature: WithinFeature,
    inputs: tuple[torch.Tensor, ...],
    target: Any,
    model: Callable[..., torch.Tensor] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Turn any accepted form of within-feature relevance into tensors shaped like the inputs.

    Args:
        within_feature: A tensor (tuple) shaped like the inputs; a Zennit composite (needs a
            ``torch.nn.Module`` ``model``); a Captum attribution instance (called as
            ``attribute(inputs, target=target)``); or a callable ``f(inputs, target)`` (``inputs``
            as given to CTC: a tensor, or a tuple for several inputs).
        inputs: The inputs CTC scored.
        target: The target of the CTC call (Captum forms; ``None``: the predicted class).
        model: The classifier, for composites and for resolving ``target=None``.

    Raises:
        ValueError: A composite without a model, relevance of the wrong shape or count, or
            non-finite relevance.
        TypeError: An unsupported kind of ``within_feature``.
    """
    single = len(inputs) == 1
    if isinstance(within_feature, (torch.Tensor, tuple)):
        relevance = within_feature
    elif isinstance(within_feature, Composite):
        if not isinstance(model, torch.nn.Module) or not single:
            raise ValueError(
                "within_feature as a Zennit composite needs a torch.nn.Module model and a single "
                "input tensor; use CTCAttributor(model, ..., within_feature=composite) or pass "
                "the composite's relevance as a tensor"
            )
        with torch.no_grad():
            output = model(inputs[0])
        indices = resolve_targets(target, output)
        one_hot = torch.zeros_like(output.flatten(1)).scatter_(1, indices.view(-1, 1), 1.0)
        relevance = composite_relevance(model, within_feature, inputs[0], one_hot.view_as(output))
    elif hasattr(within_feature, "attribute"):
        forward = getattr(within_feature, "forward_func", model)
        if target is None and forward is not None:
            with torch.no_grad():
                target = resolve_targets(None, forward(*inputs))
        relevance = within_feature.attribute(inputs[0] if single else inputs, target=target)
    elif callable(within_feature):
        relevance = within_feature(inputs[0] if single else inputs, target)
    else:
        raise TypeError(
            "within_feature must be a relevance tensor (tuple), a Zennit composite, a Captum "
            f"attribution or a callable f(inputs, target); got {type(within_feature).__name__}"
        )
    return _check_relevance(relevance, inputs)


def _check_relevance(relevance: Any, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    if isinstance(relevance, tuple) and len(relevance) != len(inputs):
        raise ValueError(f"got {len(relevance)} relevance tensors for {len(inputs)} inputs")
    return broadcast_to_inputs(relevance, inputs, "within-feature relevance")


def distribute_within_features(
    scores: torch.Tensor,
    features: FeatureSet,
    inputs: tuple[torch.Tensor, ...],
    within_feature: WithinFeature,
    target: Any,
    model: Callable[..., torch.Tensor] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Split each feature's CTC score over its elements by relevance magnitude.

    Args:
        scores: (N, K) CTC scores (0 for absent features).
        features: The features the scores belong to.
        inputs: The inputs, one tensor per feature mask.
        within_feature: The relevance (see
            [`resolve_relevance`][ctc_plugin.ctc.within.resolve_relevance]).
        target: The CTC call's target, handed to the relevance method.
        model: The classifier (needed for Zennit composites).

    Returns:
        One attribution per input, shaped like it; over every feature the elements add up to
        the feature's score.
    """
    relevance = resolve_relevance(within_feature, inputs, target, model)
    n, k = scores.shape
    positions, magnitudes = [], []
    totals = scores.new_zeros(n, k)
    counts = scores.new_zeros(n, k)
    for index, (x, r) in enumerate(zip(inputs, relevance)):
        mask = features.masks[index].expand(x.shape).reshape(n, -1)
        pos = torch.searchsorted(features.ids, mask)
        magnitude = r.reshape(n, -1).abs().to(scores.dtype)
        totals.scatter_add_(1, pos, magnitude)
        counts.scatter_add_(1, pos, torch.ones_like(magnitude))
        positions.append(pos)
        magnitudes.append(magnitude)
    reached = totals > 0
    safe_totals = torch.where(reached, totals, torch.ones_like(totals))
    out = []
    for x, pos, magnitude in zip(inputs, positions, magnitudes):
        weight = torch.where(
            reached.gather(1, pos),
            magnitude / safe_totals.gather(1, pos),
            1.0 / counts.gather(1, pos).clamp_min(1.0),
        )
        out.append((scores.gather(1, pos) * weight).view(x.shape).to(x.dtype))
    return tuple(out)


__all__ = ["composite_relevance", "distribute_within_features", "resolve_relevance"]
