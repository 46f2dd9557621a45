"""Pixel-level CTC: each feature's score split over its elements by relevance magnitude."""

from __future__ import annotations

import pytest
import torch
from captum.attr import InputXGradient
from hypothesis import given, settings
from hypothesis import strategies as st
from zennit.composites import EpsilonPlusFlat

from ctc_plugin.ctc.attribution import CTC
from ctc_plugin.ctc.attributor import CTCAttributor
from ctc_plugin.ctc.composite import CTCComposite
from ctc_plugin.ctc.masks import prepare_features
from ctc_plugin.ctc.within import distribute_within_features
from ctc_plugin.testing import CNNSpec, RandomCNN, random_partition

from .test_composite import module_net


def per_feature_sums(
    attribution: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor
) -> torch.Tensor:
    """(N, K) sums of an attribution over each feature's elements (plain torch)."""
    mask = mask.expand(attribution.shape)
    return torch.stack(
        [
            torch.stack([(attribution[n] * (mask[n] == i)).sum() for i in ids.tolist()])
            for n in range(attribution.shape[0])
        ]
    )


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 1000),
    batch=st.integers(1, 3),
    features=st.integers(1, 6),
    per_example=st.booleans(),
    zero_features=st.integers(0, 2),
)
def test_per_feature_sums_equal_scores(seed, batch, features, per_example, zero_features) -> None:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, 6, 6, generator=generator, dtype=torch.float64)
    mask = random_partition(6, 6, features, seed=seed, batch=batch if per_example else 1)
    feature_set = prepare_features((x,), mask)
    scores = torch.randn(batch, feature_set.count, generator=generator, dtype=torch.float64)
    relevance = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    for i in feature_set.ids[:zero_features].tolist():  # features the relevance does not reach
        relevance = relevance.masked_fill(mask.expand(x.shape) == i, 0.0)
    (attribution,) = distribute_within_features(scores, feature_set, (x,), relevance, None)
    sums = per_feature_sums(attribution, mask, feature_set.ids)
    torch.testing.assert_close(sums, scores * feature_set.presence)
    # the sign of the map is the sign of the feature's score (weights are |relevance| shares)
    spread = scores.gather(
        1, torch.searchsorted(feature_set.ids, mask.expand(x.shape).reshape(batch, -1).contiguous())
    )
    assert bool((attribution.reshape(batch, -1) * spread >= 0).all())


def test_uniform_relevance_equals_plain_ctc_spread_evenly() -> None:
    model = RandomCNN(CNNSpec(), seed=3).double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    mask = random_partition(8, 8, 5, seed=3, batch=2)
    ctc = CTC(model, bias_sharing="proportional")
    plain = ctc.attribute(x, target=1, feature_mask=mask)
    within = ctc.attribute(x, target=1, feature_mask=mask, within_feature=torch.ones_like(x))
    elements = torch.zeros_like(x)
    for n in range(2):
        for i in mask[n].unique().tolist():
            region = (mask[n] == i).expand(x.shape[1:])
            elements[n][region] = region.sum()
    torch.testing.assert_close(within, plain / elements)


def test_zero_relevance_falls_back_to_even_spread() -> None:
    model = RandomCNN(CNNSpec(), seed=4).double()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    mask = random_partition(8, 8, 3, seed=4)
    ctc = CTC(model, bias_sharing="none")
    uniform = ctc.attribute(x, 0, feature_mask=mask, within_feature=torch.ones_like(x))
    zero = ctc.attribute(x, 0, feature_mask=mask, within_feature=torch.zeros_like(x))
    torch.testing.assert_close(zero, uniform)


def test_tuple_inputs_share_a_feature_across_inputs() -> None:
    x = (torch.rand(1, 2, 4, dtype=torch.float64), torch.rand(1, 3, dtype=torch.float64))
    masks = (torch.tensor([[[0, 0, 1, 1], [1, 2, 2, 2]]]), torch.tensor([[2, 0, 0]]))
    features = prepare_features(x, masks)
    scores = torch.tensor([[1.5, -2.0, 0.25]], dtype=torch.float64)
    relevance = (torch.randn(1, 2, 4, dtype=torch.float64), torch.randn(1, 3, dtype=torch.float64))
    out = distribute_within_features(scores, features, x, relevance, None)
    for k, i in enumerate(features.ids.tolist()):
        total = sum((o * (m == i)).sum() for o, m in zip(out, masks))
        torch.testing.assert_close(total, scores[0, k])


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_captum_method_and_callable() -> None:
    model = RandomCNN(CNNSpec(), seed=5).double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    mask = random_partition(8, 8, 4, seed=5)
    ctc = CTC(model, bias_sharing="proportional")
    method = InputXGradient(model)
    via_captum = ctc.attribute(x, 2, feature_mask=mask, within_feature=method)
    via_callable = ctc.attribute(
        x,
        2,
        feature_mask=mask,
        within_feature=lambda inputs, target: method.attribute(inputs, target=target),
    )
    via_tensor = ctc.attribute(
        x, 2, feature_mask=mask, within_feature=method.attribute(x, target=2)
    )
    torch.testing.assert_close(via_captum, via_tensor)
    torch.testing.assert_close(via_callable, via_tensor)


def test_zennit_composite_from_ctc_and_from_attributor() -> None:
    model = module_net()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    mask = random_partition(8, 8, 4, seed=6)
    ctc = CTC(model, bias_sharing="proportional")
    pixel, scores = ctc.attribute(
        x, 1, feature_mask=mask, within_feature=EpsilonPlusFlat(), return_feature_scores=True
    )
    torch.testing.assert_close(per_feature_sums(pixel, mask, scores.ids), scores.scores)
    attributor = CTCAttributor(
        model,
        CTCComposite(bias_sharing="proportional"),
        feature_mask=mask,
        within_feature=EpsilonPlusFlat(),
    )
    _, relevance = attributor(x, torch.eye(3, dtype=torch.float64)[[1]])
    torch.testing.assert_close(relevance, pixel)
    assert not pixel.eq(pixel.flatten()[0]).all()  # the map has detail within features


def test_bad_relevance_is_refused() -> None:
    model = RandomCNN(CNNSpec(), seed=7).double()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    mask = random_partition(8, 8, 2, seed=7)
    ctc = CTC(model, bias_sharing="none")
    with pytest.raises(ValueError, match="does not broadcast"):
        ctc.attribute(x, 0, feature_mask=mask, within_feature=torch.ones(1, 3, 4, 4))
    with pytest.raises(ValueError, match="NaN"):
        ctc.attribute(x, 0, feature_mask=mask, within_feature=torch.full_like(x, float("nan")))
    with pytest.raises(TypeError, match="within_feature"):
        ctc.attribute(x, 0, feature_mask=mask, within_feature="lrp")
