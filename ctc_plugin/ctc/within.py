"""Pixel-level CTC: each feature's score distributed over its elements by a relevance map.

CTC scores whole features (segments). To get a map with pixel detail whose per-feature totals
stay exactly the CTC scores, [`distribute_within_features`][ctc_plugin.distribute_within_features]
splits each feature's score among its elements in proportion to the *magnitude* of a relevance
map (a precomputed tensor, any Zennit composite, any Captum attribution or any callable: see
[`ctc_plugin.relevance`][ctc_plugin.relevance]), after the scores were computed:

    attributions, scores = CTC(model).attribute(x, target, feature_mask=segments,
                                                return_feature_scores=True)
    pixels = distribute_within_features(x, scores, EpsilonPlusFlat(), model=model)

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

import torch

from ctc_plugin.ctc.attribution import TensorOrTuple
from ctc_plugin.ctc.feature_scores import FeatureScores
from ctc_plugin.ctc.masks import FeatureSet, broadcast_to_inputs
from ctc_plugin.inputs import check_inputs
from ctc_plugin.relevance import Relevance, compute_relevance


def distribute_within_features(
    inputs: TensorOrTuple,
    scores: FeatureScores,
    relevance: Relevance,
    *,
    model: Callable[..., torch.Tensor] | None = None,
) -> TensorOrTuple:
    """Pixel-level CTC: split each feature's CTC score over its elements by relevance magnitude.

    Element ``i`` of feature ``S`` gets ``score_S * |R_i| / sum_{j in S} |R_j|`` (evenly
    ``score_S / |S|`` where the relevance is zero on all of ``S``), so over every feature the
    elements add up to its CTC score and the map's sign is the score's sign; the relevance only
    decides *where* inside the feature the score sits.

    Args:
        inputs: The inputs CTC scored (a tensor, or a tuple of them), as given to
            [`CTC.attribute`][ctc_plugin.CTC.attribute] or the
            [`CTCAttributor`][ctc_plugin.CTCAttributor].
        scores: The [`FeatureScores`][ctc_plugin.FeatureScores] of that call
            (``attribute(..., return_feature_scores=True)`` or ``attributor.feature_scores``);
            they carry the feature mask the call used and the target it scored.
        relevance: Where inside each feature the score goes (see
            [`compute_relevance`][ctc_plugin.relevance.compute_relevance]): a relevance
            tensor (or tuple) shaped like the inputs; a Zennit composite (pass ``model``); a
            Captum attribution, called as ``attribute(inputs, target=scores.captum_target)``
            (class indices, or index tuples for outputs of more dimensions); or a callable
            ``f(inputs, target)`` given ``scores.captum_target``.
        model: The classifier, a ``torch.nn.Module`` (needed for a Zennit composite).

    Returns:
        Attributions shaped like ``inputs`` (a tensor, or a tuple for tuple inputs).

    Raises:
        TypeError: ``scores`` are not [`FeatureScores`][ctc_plugin.FeatureScores], or a
            relevance of none of the accepted forms.
        ValueError: Scores of other inputs, relevance of the wrong shape or count, non-finite
            relevance, or a Zennit composite without a ``torch.nn.Module`` model.

    Examples:
        >>> attributions, scores = CTC(model).attribute(
        ...     images, target, feature_mask=segments, return_feature_scores=True)
        >>> pixels = distribute_within_features(images, scores, EpsilonPlusFlat(), model=model)
        >>> pixels = distribute_within_features(images, scores, InputXGradient(model))
    """
    if not isinstance(scores, FeatureScores):
        raise TypeError(
            "scores must be the FeatureScores of a CTC call (CTC(model).attribute(..., "
            "return_feature_scores=True) or CTCAttributor.feature_scores); got "
            f"{type(scores).__name__}"
        )
    inputs_tuple = check_inputs(inputs)
    features = _features_of(scores, inputs_tuple)
    given = compute_relevance(relevance, inputs, scores.captum_target, model=model)
    if isinstance(given, tuple) and len(given) != len(inputs_tuple):
        raise ValueError(f"got {len(given)} relevance tensors for {len(inputs_tuple)} inputs")
    checked = broadcast_to_inputs(given, inputs_tuple, "within-feature relevance")
    out = spread_by_relevance(scores.scores, features, inputs_tuple, checked)
    return out if isinstance(inputs, tuple) else out[0]


def _features_of(scores: FeatureScores, inputs: tuple[torch.Tensor, ...]) -> FeatureSet:
    """The features the scores belong to, checked against ``inputs``."""
    masks = scores.feature_mask
    n = inputs[0].shape[0]
    fits = len(masks) == len(inputs) and scores.scores.shape[0] == n
    for mask, x in zip(masks, inputs):
        try:
            fits = fits and mask.expand(x.shape).shape == x.shape
        except RuntimeError:
            fits = False
    if not fits:
        shapes = ", ".join(str(tuple(x.shape)) for x in inputs)
        mask_shapes = ", ".join(str(tuple(m.shape)) for m in masks)
        raise ValueError(
            f"these scores belong to other inputs: {scores.scores.shape[0]} examples with feature "
            f"masks {mask_shapes}, but the inputs are {shapes}; pass the inputs of the call that "
            "returned the scores"
        )
    return FeatureSet(masks=masks, ids=scores.ids, presence=scores.present)


def spread_by_relevance(
    scores: torch.Tensor,
    features: FeatureSet,
    inputs: tuple[torch.Tensor, ...],
    relevance: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor, ...]:
    """Split each feature's score over its elements by relevance magnitude (the formula).

    Args:
        scores: (N, K) CTC scores (0 for absent features).
        features: The features the scores belong to.
        inputs: The inputs, one tensor per feature mask.
        relevance: One relevance tensor per input, shaped like it.

    Returns:
        One attribution per input, shaped like it; over every feature the elements add up to
        the feature's score.
    """
    n, k = scores.shape
    positions, magnitudes = [], []
    totals = scores.new_zeros(n, k)
    counts = scores.new_zeros(n, k)
    # each example's magnitudes relative to its largest (in float64): only their ratios matter,
    # and a feature's sum of huge relevances (1e37 in float32) would overflow to inf
    raw = [r.reshape(n, -1).abs().double() for r in relevance]
    largest = torch.stack([m.amax(dim=1) for m in raw]).amax(dim=0, keepdim=True).T
    largest = largest.clamp_min(torch.finfo(torch.float64).tiny)
    for index, (x, r) in enumerate(zip(inputs, raw)):
        mask = features.masks[index].expand(x.shape).reshape(n, -1).contiguous()
        pos = torch.searchsorted(features.ids, mask)
        magnitude = (r / largest).to(scores.dtype)
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


__all__ = ["distribute_within_features", "spread_by_relevance"]
